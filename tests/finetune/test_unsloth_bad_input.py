"""Bad input to the Unsloth API and the pipeline: a clear error naming the fix, nothing half-written, the span ERROR."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.pipeline import PipelineContext
from llamatelemetry.pipeline import attributes as pnames
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth.errors import (
    AdaptersNotMergedError,
    ModelFolderNotFoundError,
    NoLoraAdaptersError,
    OutputPathError,
    UnknownQuantTypeError,
    UnslothNotInstalledError,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _stage_span(telemetry: InMemoryTelemetry, stage: str) -> Any:
    return telemetry.span(pnames.SPAN_PREFIX + stage)


def _assert_error(span: Any, error: type[BaseException]) -> None:
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"].endswith(error.__name__)


@pytest.fixture
def model(tiny_llama_dir: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True)


def test_load_model_without_unsloth_says_how_to_install_it(tiny_llama_dir: Path) -> None:
    spec = importlib.util.find_spec("unsloth")
    if spec is not None and spec.origin is not None:
        pytest.skip("Unsloth is installed here; tests_unsloth covers load_model with it")
    from llamatelemetry.unsloth import load_model

    with InMemoryTelemetry() as telemetry:
        with pytest.raises(UnslothNotInstalledError, match=r'pip install "llamatelemetry-unsloth\[unsloth\]"'):
            load_model(str(tiny_llama_dir), load_in_4bit=True)
        _assert_error(telemetry.span(names.SPAN_MODEL_LOAD), UnslothNotInstalledError)


def test_a_missing_model_folder(tmp_path: Path) -> None:
    from llamatelemetry.unsloth import load_model
    from llamatelemetry_unsloth.pipeline import run_pipeline

    with pytest.raises(ModelFolderNotFoundError, match="save_pretrained"):
        load_model(str(tmp_path / "no-such-model"))
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(ModelFolderNotFoundError, match="no such folder"):
            run_pipeline(tmp_path / "run", model_dir=tmp_path / "no-such-model")
        _assert_error(_stage_span(telemetry, "finetune"), ModelFolderNotFoundError)
        _assert_error(telemetry.span(pnames.SPAN_PIPELINE), ModelFolderNotFoundError)
    assert not (tmp_path / "run").exists(), "nothing written"


def test_merge_without_lora_adapters(model: Any, tmp_path: Path) -> None:
    from llamatelemetry.unsloth import merge_lora_adapters

    ctx = PipelineContext(base_model="tiny")
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(NoLoraAdaptersError, match="get_peft_model"):
            merge_lora_adapters(model, ctx=ctx, save_path=tmp_path / "merged")
        _assert_error(_stage_span(telemetry, "merge_lora"), NoLoraAdaptersError)
    assert not (tmp_path / "merged").exists() and len(ctx.manifest) == 0


@pytest.mark.parametrize("quant_type", ["int8", "awq", "", None])
def test_an_unknown_quant_type_fails_before_anything_is_written(model: Any, tmp_path: Path, quant_type: Any) -> None:
    from llamatelemetry.unsloth import export_to_llamatelemetry

    with InMemoryTelemetry() as telemetry:
        with pytest.raises(UnknownQuantTypeError, match="Q4_K_M"):
            export_to_llamatelemetry(model=model, output_path=tmp_path / "model-q4.gguf", quant_type=quant_type)
        _assert_error(_stage_span(telemetry, "export_gguf"), UnknownQuantTypeError)
    assert list(tmp_path.iterdir()) == []


def test_a_gguf_type_llama_cpp_lacks_is_refused_before_the_export(model: Any, tiny_llama_dir: Path,
                                                                    tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from llamatelemetry.unsloth import export_to_llamatelemetry
    from llamatelemetry_llamacpp.quantize import UnknownQuantTypeError as StageUnknownQuantTypeError

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    with InMemoryTelemetry() as telemetry:
        # The shape of a GGUF type, but no quantizer makes it: the quantize stage's own error, with what it makes.
        with pytest.raises(StageUnknownQuantTypeError, match=r"'Q9_0' is not a GGUF type .* Use one of: .*Q8_0"):
            export_to_llamatelemetry(model=model, tokenizer=tokenizer, output_path=tmp_path / "out" / "model-q9.gguf",
                                     quant_type="Q9_0")
        # Refused before the F16 export ran: no export span; the stage that refused it is an ERROR span.
        assert not [s for s in telemetry.spans() if s.name == pnames.SPAN_PREFIX + "export_gguf"]
        quantize = _stage_span(telemetry, "quantize")
        assert quantize.status.status_code.name == "ERROR" and "UnknownQuantTypeError" in quantize.attributes[
            "error.type"]
    assert list(tmp_path.iterdir()) == [], "nothing written, no folder made"


def test_a_k_quant_without_llama_cpp_python_is_refused_before_the_export(
        model: Any, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    import sys

    from llamatelemetry.unsloth import export_to_llamatelemetry
    from llamatelemetry_llamacpp.quantize import QuantizerNotInstalledError

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(QuantizerNotInstalledError, match=r"Q4_K_M needs llama\.cpp's quantizer.*pip install "
                                                             "llama-cpp-python"):
            export_to_llamatelemetry(model=model, tokenizer=tokenizer, output_path=tmp_path / "model-q4.gguf",
                                     quant_type="Q4_K_M")
        assert not [s for s in telemetry.spans() if s.name == pnames.SPAN_PREFIX + "export_gguf"]
        _assert_error(_stage_span(telemetry, "quantize"), QuantizerNotInstalledError)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_f16_file_is_refused_not_overwritten(model: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    from llamatelemetry.unsloth import export_to_llamatelemetry

    mine = tmp_path / "model-f16.gguf"
    mine.write_bytes(b"the user's own F16 model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(OutputPathError, match=r"model-f16\.gguf'.*a file is there.*keep_f16=False"):
            export_to_llamatelemetry(model=model, tokenizer=tokenizer, output_path=tmp_path / "model-q4.gguf",
                                     quant_type="Q8_0")
        _assert_error(_stage_span(telemetry, "export_gguf"), OutputPathError)
    assert mine.read_bytes() == b"the user's own F16 model" and _names(tmp_path) == ["model-f16.gguf"]
    # keep_f16=False writes the F16 under a temporary name instead: the user's file is untouched, the export done.
    written = export_to_llamatelemetry(model=model, tokenizer=tokenizer, output_path=tmp_path / "model-q4.gguf",
                                       quant_type="Q8_0", keep_f16=False)
    assert Path(written).read_bytes()[:4] == b"GGUF"
    assert mine.read_bytes() == b"the user's own F16 model" and _names(tmp_path) == ["model-f16.gguf", "model-q4.gguf"]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_missing_output_folders_are_created_and_removed_again_if_the_chain_fails(
        model: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from llamatelemetry.unsloth import export_to_llamatelemetry

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    # As the export and quantize stages do: the folders are made for the output ...
    written = export_to_llamatelemetry(model=model, tokenizer=tokenizer, quant_type="Q8_0",
                                       output_path=tmp_path / "new" / "deeper" / "model-q8_0.gguf")
    assert Path(written).read_bytes()[:4] == b"GGUF"
    assert _names(tmp_path / "new" / "deeper") == ["model-f16.gguf", "model-q8_0.gguf"]
    # ... and a chain that fails (here the export: an architecture our writer does not know) takes them away.
    from llamatelemetry.quantization.gguf import UnsupportedArchitectureError

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=1,
                                                                n_head=2, n_positions=32))
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel"):
            export_to_llamatelemetry(model=gpt2, tokenizer=tokenizer, quant_type="Q8_0",
                                     output_path=tmp_path / "other" / "deep" / "model-q8_0.gguf")
        assert _stage_span(telemetry, "export_gguf").status.status_code.name == "ERROR"
    assert _names(tmp_path) == ["new"]
    # A file standing where a folder should be is refused before anything is written.
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(OutputPathError, match="is a file, not a folder"):
            export_to_llamatelemetry(model=model, tokenizer=tokenizer, output_path=Path(written) / "x" / "m.gguf")
        _assert_error(_stage_span(telemetry, "export_gguf"), OutputPathError)


def test_an_output_path_in_a_read_only_folder(model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry.unsloth import export_to_llamatelemetry

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        # Fake: root writes through any permission bits, so the check sees what an ordinary user's os.access says.
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == folder and mode & os.W_OK
                            else real_access(path, mode, **kw))
    try:
        with InMemoryTelemetry() as telemetry:
            with pytest.raises(OutputPathError, match="read-only"):
                export_to_llamatelemetry(model=model, output_path=folder / "model-q4.gguf")
            _assert_error(_stage_span(telemetry, "export_gguf"), OutputPathError)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_exporting_a_model_whose_adapters_are_not_merged(model: Any, tmp_path: Path) -> None:
    from llamatelemetry.unsloth import export_to_llamatelemetry

    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(AdaptersNotMergedError, match="merge_lora_adapters"):
            export_to_llamatelemetry(model=lora, output_path=tmp_path / "model-q4.gguf")
        _assert_error(_stage_span(telemetry, "export_gguf"), AdaptersNotMergedError)
    assert list(tmp_path.iterdir()) == []


def test_pipeline_demo_on_bad_input_shuts_telemetry_down_and_leaves_no_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import tempfile

    import llamatelemetry
    from llamatelemetry.cli import main
    from llamatelemetry_unsloth.instrument import is_instrumented

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the demo's temporary workdir goes
    try:
        assert main(["pipeline-demo", "--model", str(tmp_path / "no-such-model")]) == 1
        err = capsys.readouterr().err
        assert "no such folder" in err and "llamatelemetry.pipeline.finetune" in err
        assert llamatelemetry.current() is None, "the demo's telemetry was shut down"
        assert not is_instrumented(), "Trainer and PEFT are unpatched again"
    finally:
        if llamatelemetry.current() is not None:  # so a failure here cannot leak into the next test
            llamatelemetry.shutdown()
    assert list(scratch.iterdir()) == [], "the temporary workdir was removed"
