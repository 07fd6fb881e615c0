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


def test_a_gguf_type_llama_cpp_lacks_leaves_no_f16_behind(model: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from llamatelemetry.unsloth import export_to_llamatelemetry

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(ValueError, match="Q9_0"):  # the shape of a GGUF type, but no quantizer makes it
            export_to_llamatelemetry(model=model, tokenizer=tokenizer, output_path=tmp_path / "model-q9.gguf",
                                     quant_type="Q9_0")
        assert telemetry.span(pnames.SPAN_PREFIX + "export_gguf").status.status_code.name != "ERROR"
        # The stage that refused it is an ERROR span.
        quantize = _stage_span(telemetry, "quantize")
        assert quantize.status.status_code.name == "ERROR" and "UnknownQuantTypeError" in quantize.attributes[
            "error.type"]
    assert list(tmp_path.iterdir()) == [], "the F16 written on the way is removed"


def test_an_output_path_in_a_missing_folder(model: Any, tmp_path: Path) -> None:
    from llamatelemetry.unsloth import export_to_llamatelemetry

    with InMemoryTelemetry() as telemetry:
        with pytest.raises(OutputPathError, match="does not exist"):
            export_to_llamatelemetry(model=model, output_path=tmp_path / "missing" / "model-q4.gguf")
        _assert_error(_stage_span(telemetry, "export_gguf"), OutputPathError)
    assert list(tmp_path.iterdir()) == []


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
