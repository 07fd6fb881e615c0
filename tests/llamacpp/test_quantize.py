"""The GGUF quantize stage: llama.cpp's quantizer in-process, the gguf package's fallback, traced, and served.

Models are the generated tiny llama GGUFs: 256 wide (every weight row K-quant aligned, a clean
Q4_K_M) and 64 wide (rows llama.cpp must store in another type). llama.cpp runs on one thread.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llamatelemetry.artifacts import sha256_file
from llamatelemetry.pipeline import PipelineContext
from llamatelemetry.pipeline import attributes as names
from llamatelemetry.quantization import QuantizationPipeline, available_methods, find_stage
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_llamacpp.backend_errors import TruncatedModelError
from llamatelemetry_llamacpp.quantize import (
    INSTALL_LLAMA_CPP,
    PYTHON_TYPES,
    QuantizeFailedError,
    QuantizeInputError,
    QuantizerNotInstalledError,
    QuantizeWriteError,
    UnknownQuantTypeError,
    quantize_gguf,
    read_gguf_facts,
    supported_types,
)
from llamatelemetry_llamacpp.testing import write_tiny_gguf

llama_cpp = pytest.importorskip("llama_cpp")

QUANT_LOG = "llamatelemetry.llama_cpp.quantize"


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-wide tiny llama in F16: n_embd 256 and feed-forward 512, so every row divides into 256-blocks."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("q256") / "tiny256-f16.gguf", n_embd=256, seed=1)
    assert read_gguf_facts(path).tensor_types == {"F16": 16, "F32": 5}
    return path


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-wide tiny llama in F16: no weight row is a multiple of 256."""
    return write_tiny_gguf(tmp_path_factory.mktemp("q64") / "tiny64-f16.gguf", n_embd=64, seed=2)


@pytest.fixture
def telemetry() -> Any:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


def _file_type(path: Path) -> int:
    return int(gguf.GGUFReader(path).fields["general.file_type"].contents())


def _llama_cpp_said(caplog: pytest.LogCaptureFixture, pattern: str) -> re.Match[str]:
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == QUANT_LOG)
    found = re.search(pattern, text)
    assert found, f"llama.cpp's log has no {pattern!r}:\n{text[-2000:]}"
    return found


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def _generate(path: Path, n: int = 4) -> str:
    """Load ``path`` in llama.cpp (one thread) and generate ``n`` tokens greedily."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, n_batch=32, verbose=False, seed=0)
    try:
        out = llm.create_completion("the quick brown fox", max_tokens=n, temperature=0.0)
        assert out["usage"]["completion_tokens"] == n
        return str(out["choices"][0]["text"])
    finally:
        llm.close()


def test_the_pipeline_finds_the_stage_and_q4_k_m_is_clean_at_256(
        tiny256: Path, tmp_path: Path, telemetry: InMemoryTelemetry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=QUANT_LOG)
    assert "gguf" in available_methods()
    assert find_stage("quantize", "gguf").distribution == "llamatelemetry-llamacpp"
    ctx = PipelineContext(base_model="tiny256")
    out = tmp_path / "model-q4.gguf"

    result = QuantizationPipeline(pipeline_ctx=ctx).run(str(tiny256), output_path=str(out), quant_type="Q4_K_M",
                                                        nthread=1)

    assert _file_type(out) == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert (result.method, result.quant_type, result.engine) == ("gguf", "Q4_K_M", "llama.cpp")
    assert result.output_path == str(out.resolve())
    # llama.cpp's Q4_K_M mix: most weights Q4_K, attn_v/ffn_down of some layers and the output Q6_K, norms F32.
    assert result.tensor_types == {"F32": 5, "Q4_K": 13, "Q6_K": 3}
    assert result.n_tensors == 21 and result.fallback_tensors == () and result.fallback_count == 0
    assert result.size_before_bytes == tiny256.stat().st_size and result.size_after_bytes == out.stat().st_size
    assert result.size_after_bytes < result.size_before_bytes / 3
    # Our bits per weight (read back from the file) is llama.cpp's own figure.
    said = _llama_cpp_said(caplog, r"quant size\s*=\s*[\d.]+ MiB \(([\d.]+) BPW\)")
    assert result.bits_per_weight == pytest.approx(float(said.group(1)), abs=0.01)
    assert not re.search(r"required fallback", "\n".join(r.getMessage() for r in caplog.records))
    assert _leftovers(tmp_path) == []

    span = telemetry.span("llamatelemetry.pipeline.quantize")
    attrs = dict(span.attributes or {})
    assert attrs[names.QUANTIZATION_METHOD] == "gguf" and attrs[names.QUANTIZATION_TYPE] == "Q4_K_M"
    assert attrs[names.QUANTIZATION_ENGINE] == "llama.cpp"
    assert attrs[names.QUANTIZATION_SOURCE_TYPE] == "F16" and attrs[names.QUANTIZATION_FILE_TYPE] == "Q4_K_M"
    assert attrs[names.QUANTIZATION_BITS_PER_WEIGHT] == pytest.approx(result.bits_per_weight, abs=1e-4)
    assert list(attrs[names.QUANTIZATION_TENSOR_TYPES]) == ["F32=5", "Q4_K=13", "Q6_K=3"]
    assert attrs[names.QUANTIZATION_TENSORS] == 21 and attrs[names.QUANTIZATION_FALLBACK_TENSORS] == 0
    assert names.QUANTIZATION_FALLBACK_NAMES not in attrs
    assert 0 < attrs[names.QUANTIZATION_DURATION] <= (span.end_time - span.start_time) / 1e9
    assert attrs[names.QUANTIZATION_SIZE_BEFORE] == result.size_before_bytes
    assert attrs[names.QUANTIZATION_SIZE_AFTER] == result.size_after_bytes
    assert list(attrs[names.INPUT_ARTIFACTS]) == [str(tiny256.resolve())]
    assert list(attrs[names.OUTPUT_ARTIFACTS]) == [str(out.resolve())]
    assert attrs[names.QUANTIZATION] == "Q4_K_M" and attrs[names.BASE_MODEL] == "tiny256"
    assert str(span.status.status_code) == "StatusCode.UNSET"

    # The manifest has both files, hashed.
    inputs = [a for a in ctx.manifest if a.metadata["role"] == "input"]
    outputs = [a for a in ctx.manifest if a.metadata["role"] == "output"]
    assert [(a.path, a.sha256, a.size_bytes) for a in inputs] == [
        (str(tiny256.resolve()), sha256_file(tiny256), tiny256.stat().st_size)]
    assert [(a.path, a.sha256, a.size_bytes) for a in outputs] == [
        (str(out.resolve()), sha256_file(out), out.stat().st_size)]
    assert outputs[0].metadata["quant_type"] == "Q4_K_M" and outputs[0].metadata["fallback_tensors"] == 0
    assert result.artifacts == tuple(outputs) and ctx.output_artifact == str(out.resolve())
    assert telemetry.metric_points("llamatelemetry.pipeline.stage.duration")


@pytest.mark.parametrize(("quant_type", "ggml_types"), [
    ("Q8_0", {"F32": 5, "Q8_0": 16}),
    ("Q6_K", {"F32": 5, "Q6_K": 16}),
    ("Q5_K_M", {"F32": 5, "Q5_K": 13, "Q6_K": 3}),
    ("Q4_0", {"F32": 5, "Q4_0": 15, "Q6_K": 1}),
])
def test_each_type_is_written_as_asked(tiny256: Path, tmp_path: Path, quant_type: str,
                                       ggml_types: dict[str, int]) -> None:
    out = tmp_path / f"m-{quant_type}.gguf"
    result = quantize_gguf(tiny256, out, quant_type=quant_type.lower(), nthread=1)
    assert result.quant_type == quant_type
    assert _file_type(out) == gguf.LlamaFileType[f"MOSTLY_{quant_type}"]
    assert result.tensor_types == ggml_types and result.fallback_tensors == ()


def test_rows_not_divisible_by_256_are_reported_as_fallbacks(
        tiny64: Path, tmp_path: Path, telemetry: InMemoryTelemetry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=QUANT_LOG)
    result = quantize_gguf(tiny64, tmp_path / "q4km.gguf", quant_type="Q4_K_M", nthread=1)

    facts = read_gguf_facts(tmp_path / "q4km.gguf")
    weights = [name for name, _, _, dims in facts.tensors if dims == 2]
    assert facts.file_type == "Q4_K_M" and len(weights) == 16
    # Q4_K -> Q5_0 and Q6_K -> Q8_0: every weight; none is a K-quant.
    assert result.tensor_types == {"F32": 5, "Q5_0": 13, "Q8_0": 3}
    assert sorted(result.fallback_tensors) == sorted(weights)
    # llama.cpp counts 15: it gives output.weight Q8_0 directly when its rows do not fit 256, without
    # calling it a fallback. We report it, since it is not the type the file's name promises either.
    said = _llama_cpp_said(caplog, r"(\d+) of (\d+) tensor\(s\) required fallback")
    assert (int(said.group(1)), int(said.group(2))) == (15, 21)
    assert "output.weight" in result.fallback_tensors
    assert any("16 of 21 tensors" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    attrs = dict(telemetry.span("llamatelemetry.pipeline.quantize").attributes or {})
    assert attrs[names.QUANTIZATION_FALLBACK_TENSORS] == 16
    assert sorted(attrs[names.QUANTIZATION_FALLBACK_NAMES]) == sorted(weights)

    # Q4_0 keeps only the output in a K-quant (Q6_K): at width 64 that one falls back, as llama.cpp says.
    caplog.clear()
    q40 = quantize_gguf(tiny64, tmp_path / "q40.gguf", quant_type="Q4_0", nthread=1)
    assert q40.fallback_tensors == ("output.weight",) and q40.tensor_types == {"F32": 5, "Q4_0": 15, "Q8_0": 1}
    said = _llama_cpp_said(caplog, r"(\d+) of (\d+) tensor\(s\) required fallback")
    assert int(said.group(1)) == 1


def test_an_unknown_type_lists_what_the_installed_llama_cpp_makes(tiny256: Path, tmp_path: Path,
                                                                  telemetry: InMemoryTelemetry) -> None:
    listed = supported_types()
    for wanted in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "F16", "F32", "IQ4_XS"):
        assert wanted in listed
    # The list is the installed llama.cpp's LLAMA_FTYPE_* constants.
    assert set(listed) == {name.split("LLAMA_FTYPE_")[1].removeprefix("MOSTLY_").removeprefix("ALL_")
                           for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_")
                           and name != "LLAMA_FTYPE_GUESSED"}
    with pytest.raises(UnknownQuantTypeError) as raised:
        QuantizationPipeline().run(str(tiny256), output_path=str(tmp_path / "x.gguf"), quant_type="Q9_K_M")
    assert isinstance(raised.value, ValueError)
    assert "'Q9_K_M'" in str(raised.value) and ", ".join(listed) in str(raised.value)
    assert list(tmp_path.iterdir()) == []
    # Refused before any work, and still a failed quantize stage in the trace.
    span = telemetry.span("llamatelemetry.pipeline.quantize")
    assert str(span.status.status_code) == "StatusCode.ERROR"
    attrs = dict(span.attributes or {})
    assert attrs["error.type"].endswith("UnknownQuantTypeError") and attrs[names.QUANTIZATION_TYPE] == "Q9_K_M"
    assert names.OUTPUT_ARTIFACTS not in attrs


def test_without_llama_cpp_python_q8_0_and_q4_0_use_the_gguf_package(
        tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telemetry: InMemoryTelemetry) -> None:
    reference = quantize_gguf(tiny256, tmp_path / "ref-q8.gguf", quant_type="Q8_0", nthread=1)
    ref_q40 = quantize_gguf(tiny256, tmp_path / "ref-q40.gguf", quant_type="Q4_0", nthread=1)
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
        assert supported_types() == PYTHON_TYPES
        q8 = quantize_gguf(tiny256, tmp_path / "py-q8.gguf", quant_type="Q8_0")
        q40 = quantize_gguf(tiny256, tmp_path / "py-q40.gguf", quant_type="Q4_0")
        with pytest.raises(QuantizerNotInstalledError) as raised:
            quantize_gguf(tiny256, tmp_path / "py-q4km.gguf", quant_type="Q4_K_M")
        assert INSTALL_LLAMA_CPP in str(raised.value) and isinstance(raised.value, ImportError)
        assert raised.value.install_command == 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python'
        with pytest.raises(UnknownQuantTypeError, match="Q8_0, Q5_1, Q5_0, Q4_1, Q4_0"):
            quantize_gguf(tiny256, tmp_path / "x.gguf", quant_type="Q9_0")
    assert not (tmp_path / "py-q4km.gguf").exists() and _leftovers(tmp_path) == []
    assert (q8.engine, q40.engine) == ("gguf-py", "gguf-py")
    assert _file_type(tmp_path / "py-q8.gguf") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert _file_type(tmp_path / "py-q40.gguf") == gguf.LlamaFileType.MOSTLY_Q4_0
    assert q8.tensor_types == {"F32": 5, "Q8_0": 16} and q40.tensor_types == {"F32": 5, "Q4_0": 16}
    stages = [s for s in telemetry.spans() if s.name == "llamatelemetry.pipeline.quantize"]
    engines = [dict(s.attributes or {})[names.QUANTIZATION_ENGINE] for s in stages
               if str(s.status.status_code) != "StatusCode.ERROR"]
    assert engines == ["llama.cpp", "llama.cpp", "gguf-py", "gguf-py"]
    refused = [dict(s.attributes or {}) for s in stages if str(s.status.status_code) == "StatusCode.ERROR"]
    assert [a["error.type"].rsplit(".", 1)[-1] for a in refused] == ["QuantizerNotInstalledError",
                                                                      "UnknownQuantTypeError"]
    assert all(names.QUANTIZATION_ENGINE not in a for a in refused)

    # The Python Q8_0 is llama.cpp's to the byte; Q4_0 too, except the output llama.cpp keeps at Q6_K.
    def tensors(path: Path) -> dict[str, tuple[Any, bytes]]:
        return {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(path).tensors}

    assert tensors(tmp_path / "py-q8.gguf") == tensors(Path(reference.output_path or ""))
    python_q40, llama_q40 = tensors(tmp_path / "py-q40.gguf"), tensors(Path(ref_q40.output_path or ""))
    assert [name for name in python_q40 if python_q40[name] != llama_q40[name]] == ["output.weight"]
    # llama.cpp loads and runs the Python-quantized files.
    assert _generate(tmp_path / "py-q40.gguf") and _generate(tmp_path / "py-q8.gguf")


def test_a_failed_write_is_an_error_span_and_leaves_nothing(
        tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telemetry: InMemoryTelemetry) -> None:
    real_write = gguf.GGUFWriter.write_tensors_to_file

    def disk_full(self: Any, *args: Any, **kwargs: Any) -> None:
        # The device fills up part-way: some bytes reach the file, then the write fails as a full disk does.
        assert self.fout is not None
        self.fout[0].write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    out = tmp_path / "full.gguf"
    with pytest.raises(QuantizeWriteError) as raised:
        quantize_gguf(tiny256, out, quant_type="Q8_0", engine="gguf-py")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", real_write)
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    assert "disk is full" in str(raised.value) and str(out) in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    span = telemetry.span("llamatelemetry.pipeline.quantize")
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert dict(span.attributes or {})["error.type"].endswith("QuantizeWriteError")
    assert names.OUTPUT_ARTIFACTS not in dict(span.attributes or {})

    # A truncated input, and one llama.cpp refuses, are ERROR spans too; an existing output is left as it was.
    broken = tmp_path / "broken.gguf"
    data = tiny256.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    out.write_bytes(b"an older model")
    telemetry.clear()
    with pytest.raises(TruncatedModelError, match="stops short"):
        quantize_gguf(broken, out, quant_type="Q4_K_M", nthread=1)
    unknown = unknown_architecture_gguf(tmp_path / "mystery.gguf")
    with pytest.raises(QuantizeFailedError, match=r"llama\.cpp could not quantize .*mystery.*unknown model "
                                                  r"architecture: 'mysterynet'"):
        quantize_gguf(unknown, out, quant_type="Q4_K_M", nthread=1)
    assert out.read_bytes() == b"an older model" and _leftovers(tmp_path) == []
    spans = [s for s in telemetry.spans() if s.name == "llamatelemetry.pipeline.quantize"]
    assert [str(s.status.status_code) for s in spans] == ["StatusCode.ERROR"] * 2
    assert [dict(s.attributes or {})["error.type"].rsplit(".", 1)[-1] for s in spans] == [
        "TruncatedModelError", "QuantizeFailedError"]


def unknown_architecture_gguf(path: Path) -> Path:
    """A well-formed GGUF of an architecture llama.cpp does not know."""
    writer = gguf.GGUFWriter(path, "mysterynet")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tensor("token_embd.weight", np.zeros((8, 256), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_packages_are_one_error_with_the_install_command(tiny256: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry.errors import PluginNotInstalledError
    from llamatelemetry.testing import fresh_plugin_manager
    from llamatelemetry_llamacpp.quantize import GGUFPackageMissingError

    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "gguf", None)
        with pytest.raises(GGUFPackageMissingError,
                           match=r"Install it with: pip install \"llamatelemetry-llamacpp\[quantize\]\""):
            quantize_gguf(tiny256, tmp_path / "o.gguf", quant_type="Q8_0")
    # Without the llama.cpp plugin, the core names the install command from its extras table.
    with monkeypatch.context() as patched, fresh_plugin_manager():
        patched.setitem(sys.modules, "llamatelemetry_llamacpp", None)
        patched.setenv("LLAMATELEMETRY_DISABLE_PLUGINS", "llamacpp")
        with pytest.raises(PluginNotInstalledError, match=r'pip install "llamatelemetry-core\[llamacpp\]"'):
            QuantizationPipeline().run(str(tiny256), output_path=str(tmp_path / "o.gguf"), quant_type="Q4_K_M")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_say_what_to_give(tiny256: Path, tmp_path: Path, telemetry: InMemoryTelemetry) -> None:
    with pytest.raises(QuantizeInputError, match="no such file or folder") as raised:
        quantize_gguf(tmp_path / "missing", tmp_path / "o.gguf", quant_type="Q8_0")
    assert isinstance(raised.value, FileNotFoundError)
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(QuantizeInputError, match=r"no config\.json"):
        quantize_gguf(tmp_path / "empty-folder", tmp_path / "o.gguf", quant_type="Q8_0")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(QuantizeInputError, match="not a GGUF file"):
        quantize_gguf(tmp_path / "notes.txt", tmp_path / "o.gguf", quant_type="Q8_0")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        quantize_gguf(tiny256, tmp_path / "empty-folder", quant_type="Q8_0")
    with pytest.raises(ValueError, match="is the input file"):
        quantize_gguf(tiny256, tiny256, quant_type="Q8_0")
    with pytest.raises(ValueError, match="needs quant_type="):
        quantize_gguf(tiny256, tmp_path / "o.gguf", quant_type=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-folder", "notes.txt"]
    # Each refusal is a failed quantize stage in the trace, with what was wrong.
    spans = [s for s in telemetry.spans() if s.name == "llamatelemetry.pipeline.quantize"]
    assert [str(s.status.status_code) for s in spans] == ["StatusCode.ERROR"] * 6
    assert [dict(s.attributes or {})["error.type"].rsplit(".", 1)[-1] for s in spans] == [
        "QuantizeInputError"] * 3 + ["IsADirectoryError"] + ["ValueError"] * 2


def test_missing_output_folders_are_created_and_removed_again_if_the_stage_fails(
        tiny256: Path, tmp_path: Path, telemetry: InMemoryTelemetry) -> None:
    # As the export stage does: the folders are made for the output ...
    out = tmp_path / "new" / "deeper" / "o.gguf"
    quantize_gguf(tiny256, out, quant_type="Q8_0", nthread=1)
    assert _file_type(out) == gguf.LlamaFileType.MOSTLY_Q8_0
    # ... and a failed stage takes away the ones it made (not those that were there), with nothing in them.
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny256.read_bytes()[:4096])
    with pytest.raises(TruncatedModelError):
        quantize_gguf(broken, tmp_path / "new" / "other" / "deep" / "o.gguf", quant_type="Q8_0", nthread=1)
    assert _files(tmp_path / "new") == ["deeper"] and _files(tmp_path) == ["broken.gguf", "new"]
    spans = [s for s in telemetry.spans() if s.name == "llamatelemetry.pipeline.quantize"]
    assert [str(s.status.status_code) for s in spans] == ["StatusCode.UNSET", "StatusCode.ERROR"]
    # A folder that cannot be made (a file is in the way) is a clear error before any work, as an ERROR span.
    with pytest.raises(QuantizeWriteError, match=r"broken\.gguf is a file, not a folder"):
        quantize_gguf(tiny256, broken / "o.gguf", quant_type="Q8_0", nthread=1)
    assert _files(tmp_path) == ["broken.gguf", "new"]
    last = [s for s in telemetry.spans() if s.name == "llamatelemetry.pipeline.quantize"][-1]
    assert dict(last.attributes or {})["error.type"].endswith("QuantizeWriteError")


def test_served_q4_k_m_generates_and_the_client_span_carries_its_gguf_facts(
        tiny256: Path, tmp_path: Path, telemetry: InMemoryTelemetry) -> None:
    from llamatelemetry_llamacpp import semconv as llama_names
    from llamatelemetry_llamacpp.client import LlamaCppClient
    from llamatelemetry_llamacpp.testing import running_server

    result = QuantizationPipeline().run(str(tiny256), output_path=str(tmp_path / "served-q4.gguf"),
                                        quant_type="Q4_K_M", nthread=1)
    served = Path(result.output_path or "")
    with running_server(served, threads=1, n_parallel=1, ctx_size=256) as server, \
            LlamaCppClient(server.base_url) as client:
        reply = client.chat.create(messages=[{"role": "user", "content": "tell me a story"}], max_tokens=6,
                                   temperature=0.0)
    assert reply.usage.completion_tokens == 6 and reply.choices[0].message["content"]
    span = next(s for s in telemetry.spans() if s.name == "chat served-q4")
    attrs = dict(span.attributes or {})
    assert attrs[llama_names.MODEL_FILE_TYPE] == "Q4_K_M"
    # The server reports its tensors' bytes: the file less its header and vocabulary.
    facts = read_gguf_facts(served)
    assert attrs[llama_names.MODEL_SIZE] == facts.n_bytes < served.stat().st_size
    assert attrs[llama_names.MODEL_PARAMETERS] == facts.n_elements
    assert attrs["gen_ai.usage.output_tokens"] == 6

    # In-process, the model-load span says the same.
    from llamatelemetry_llamacpp.backend import LlamaCppBackend

    backend = LlamaCppBackend(served, n_ctx=128, n_threads=1)
    backend.start()
    try:
        load = dict(telemetry.span(llama_names.SPAN_MODEL_LOAD).attributes or {})
    finally:
        backend.shutdown()
    assert load[llama_names.MODEL_FILE_TYPE] == "Q4_K_M" and load[llama_names.MODEL_FILE_SIZE] == facts.size_bytes


def test_a_hugging_face_model_is_exported_then_quantized(tmp_path: Path, telemetry: InMemoryTelemetry,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("llamatelemetry_transformers", reason="the export stage is the transformers plugin's")
    from llamatelemetry_transformers.testing import build_tiny_model

    torch.set_num_threads(1)
    tokenizer = byte_level_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=256, seed=3)  # 256 wide: every row K-quant aligned
    folder = tmp_path / "tiny-hf"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "model-q4.gguf"
    ctx = PipelineContext()

    result = QuantizationPipeline(pipeline_ctx=ctx).run(str(folder), output_path=str(out), quant_type="Q4_K_M",
                                                        nthread=1)

    assert _file_type(out) == gguf.LlamaFileType.MOSTLY_Q4_K_M and result.fallback_tensors == ()
    assert set(result.tensor_types) <= {"F32", "Q4_K", "Q6_K"} and result.intermediate_path is None
    # The intermediate F16 file was written beside the output and removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-q4.gguf", "tiny-hf"]
    export, quantize = (telemetry.span(f"llamatelemetry.pipeline.{name}") for name in ("export_gguf", "quantize"))
    assert export.end_time <= quantize.start_time
    intermediate = list(dict(export.attributes or {})[names.OUTPUT_ARTIFACTS])
    assert list(dict(quantize.attributes or {})[names.INPUT_ARTIFACTS]) == intermediate
    assert dict(quantize.attributes or {})[names.QUANTIZATION_SOURCE_TYPE] == "F16"
    # The manifest keeps the removed intermediate's record (path, sha256): it is the quantize stage's input.
    records = {a.path: (a.metadata["stage"], a.metadata["role"]) for a in ctx.manifest}
    # The intermediate keeps the record of the stage that wrote it; the quantize span names it as its input.
    assert records[intermediate[0]] == ("export_gguf", "output") and not Path(intermediate[0]).exists()
    assert records[str(out.resolve())] == ("quantize", "output")
    assert ctx.output_artifact == str(out.resolve()) and ctx.base_model == "tiny-hf"
    assert _generate(out)

    # The API reference's call as written: a model object (loaded from its folder, which has the tokenizer).
    import transformers

    (tmp_path / "seed").mkdir()
    monkeypatch.chdir(tmp_path / "seed")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
    seed = QuantizationPipeline(pipeline_ctx=ctx).run(loaded, output_path="model-q4.gguf", quant_type="Q4_K_M")
    assert seed.output_path == str(tmp_path / "seed" / "model-q4.gguf") and seed.quant_type == "Q4_K_M"
    assert _file_type(tmp_path / "seed" / "model-q4.gguf") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert _files(tmp_path / "seed") == ["model-q4.gguf"]

    # A model object with its tokenizer; the intermediate kept on request.
    kept_ctx = PipelineContext()
    kept = QuantizationPipeline(pipeline_ctx=kept_ctx).run(
        model, output_path=str(tmp_path / "obj-q8.gguf"), quant_type="Q8_0", tokenizer=tokenizer,
        keep_intermediate=True, nthread=1)
    assert kept.intermediate_path is not None and Path(kept.intermediate_path).parent == tmp_path
    assert read_gguf_facts(kept.intermediate_path).file_type == "F16"
    # ... under a normal name beside the output, which the manifest's export record names; no hidden file stays.
    assert Path(kept.intermediate_path).name == "obj-q8-f16.gguf"
    records = {a.path: (a.metadata["stage"], a.metadata["role"]) for a in kept_ctx.manifest}
    assert records[str((tmp_path / "obj-q8-f16.gguf").resolve())] == ("export_gguf", "output")
    assert kept_ctx.manifest.verify().ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert read_gguf_facts(tmp_path / "obj-q8.gguf").file_type == "Q8_0"


def byte_level_tokenizer() -> Any:
    """A byte-level BPE tokenizer (GPT-2 / Llama 3 style) trained here, with <s>, </s> and <pad>."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello world, tell me a story"] * 8,
                            trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")
