"""GGUF export through llama.cpp's own convert_hf_to_gguf.py, for an architecture our writer does not know.

The script comes from the llama-cpp-python sdist (vendor/llama.cpp, with its bundled gguf-py and
conversion package): ``nox -s tests`` downloads the pinned sdist into .nox/.cache/llama-cpp-python-sdist
(or set LLAMATELEMETRY_TEST_LLAMA_CPP_SDIST to a folder holding it). The model is a tiny
ArceeForCausalLM (llama-like, ReLU² MLP), which llama.cpp converts and runs and our writer refuses.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.pipeline import attributes as names
from llamatelemetry.quantization.gguf import GGUFExportError, UnsupportedArchitectureError, convert_to_gguf
from llamatelemetry.testing import InMemoryTelemetry

sys.path.insert(0, str(Path(__file__).parent))
from test_gguf_export import (
    PROMPT,
    SAMPLES,
    assert_faithful,
    byte_level_tokenizer,
    hf_logits,
    llama_cpp_logits,
    load,
    save,
    spm_style_tokenizer,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports it: pip install sentencepiece")

ROOT = Path(__file__).resolve().parents[2]
SDIST_DIR = Path(os.environ.get("LLAMATELEMETRY_TEST_LLAMA_CPP_SDIST")
                 or ROOT / ".nox" / ".cache" / "llama-cpp-python-sdist")
_MEMBERS = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")


@pytest.fixture(scope="module")
def llama_cpp_checkout() -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist: the converter and what it imports (extracted once)."""
    archives = sorted(SDIST_DIR.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        pytest.skip(f"no llama-cpp-python sdist in {SDIST_DIR}: nox -s tests downloads it (pip download --no-deps "
                    "--no-binary :all: llama-cpp-python==<version>)")
    archive = archives[-1]
    root = SDIST_DIR / archive.name.removesuffix(".tar.gz")
    checkout = root / "vendor" / "llama.cpp"
    if not (checkout / "convert_hf_to_gguf.py").is_file():
        with tarfile.open(archive) as tar:
            prefix = f"{root.name}/"
            wanted = [m for m in tar.getmembers()
                      if any(m.name.removeprefix(prefix).startswith(p) for p in _MEMBERS)]
            tar.extractall(SDIST_DIR, members=wanted, filter="data")
    return checkout


def tiny_arcee(tokenizer: Any) -> Any:
    config = transformers.ArceeConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return transformers.ArceeForCausalLM(config).eval()


def test_our_writer_names_the_architecture_and_the_converter_option(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMATELEMETRY_GGUF_CONVERTER", raising=False)
    tokenizer = spm_style_tokenizer()
    folder = save(tmp_path / "arcee", tiny_arcee(tokenizer), tokenizer)
    with pytest.raises(UnsupportedArchitectureError, match="ArceeForCausalLM") as raised:
        convert_to_gguf(folder, tmp_path / "arcee.gguf")
    assert raised.value.architecture == "ArceeForCausalLM"
    assert "LLAMATELEMETRY_GGUF_CONVERTER" in str(raised.value)


def test_llama_cpp_converter_exports_what_our_writer_does_not_know(llama_cpp_checkout: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = spm_style_tokenizer()
    model = tiny_arcee(tokenizer)
    # The environment variable names a llama.cpp checkout (here the sdist's vendor/llama.cpp); the model is an
    # object in memory, which the stage saves to a folder for the converter.
    monkeypatch.setenv("LLAMATELEMETRY_GGUF_CONVERTER", str(llama_cpp_checkout))
    with InMemoryTelemetry() as telemetry:
        result = convert_to_gguf(model, tmp_path / "arcee-f32.gguf", outtype="f32", tokenizer=tokenizer)
        span = telemetry.span("llamatelemetry.pipeline.export_gguf")
    attributes = dict(span.attributes or {})
    assert result.engine == "convert_hf_to_gguf.py" == attributes[names.QUANTIZATION_ENGINE]
    assert attributes["llamatelemetry.gguf.converter"] == str(llama_cpp_checkout / "convert_hf_to_gguf.py")
    assert attributes["llamatelemetry.gguf.converter.exit_code"] == 0
    assert attributes[names.QUANTIZATION_DURATION] > 0
    assert attributes["llamatelemetry.gguf.architecture"] == "arcee"
    assert attributes["llamatelemetry.gguf.tokenizer"] == "llama"
    assert result.tensor_types == {"F32": 19}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arcee-f32.gguf"], "no temporary file left"
    llm = load(Path(result.output_path or ""))
    try:
        for text in SAMPLES:
            assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        assert_faithful(llama_cpp_logits(llm, ids), hf_logits(model, ids))
        assert "tokenizer.chat_template" in llm.metadata
    finally:
        llm.close()


def test_a_failing_converter_is_an_error_span_with_its_output(llama_cpp_checkout: Path, tmp_path: Path) -> None:
    # llama.cpp's converter recognises byte-level tokenizers by a hash of known ones: a fresh one is refused.
    tokenizer = byte_level_tokenizer()
    folder = save(tmp_path / "arcee", tiny_arcee(tokenizer), tokenizer)
    script = llama_cpp_checkout / "convert_hf_to_gguf.py"
    with InMemoryTelemetry() as telemetry, pytest.raises(GGUFExportError, match="pre-tokenizer") as raised:
        convert_to_gguf(folder, tmp_path / "arcee.gguf", converter=script)
    assert "exit status 1" in str(raised.value)
    span = telemetry.span("llamatelemetry.pipeline.export_gguf")
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert (span.attributes or {})["llamatelemetry.gguf.converter.exit_code"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arcee"], "nothing half-written"


def test_an_architecture_neither_path_knows_is_named_with_the_converters_words(llama_cpp_checkout: Path,
                                                                               tmp_path: Path) -> None:
    import json

    tokenizer = spm_style_tokenizer()
    folder = save(tmp_path / "mystery", tiny_arcee(tokenizer), tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MysteryNetForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with InMemoryTelemetry() as telemetry, pytest.raises(UnsupportedArchitectureError) as raised:
        convert_to_gguf(folder, tmp_path / "mystery.gguf", converter=llama_cpp_checkout)
    message = str(raised.value)
    assert raised.value.architecture == "MysteryNetForCausalLM" and "recent enough" in message
    # What llama.cpp's converter said is in the error, not only on a stream nobody saw.
    assert "Model MysteryNetForCausalLM is not supported" in message
    assert "Model MysteryNetForCausalLM is not supported" in (raised.value.converter_output or "")
    span = telemetry.span("llamatelemetry.pipeline.export_gguf")
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mystery"], "nothing half-written"
