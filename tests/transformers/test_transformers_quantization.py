"""Quantization stages through the core QuantizationPipeline and the PipelineTracer: spans, artifacts, errors."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.artifacts import ArtifactManifest
from llamatelemetry.errors import PluginNotInstalledError
from llamatelemetry.pipeline import PipelineContext, PipelineTracer
from llamatelemetry.pipeline import attributes as pnames
from llamatelemetry.quantization import (
    GGUFNotAvailableError,
    QuantizationPipeline,
    StageNotFoundError,
    available_methods,
    find_stage,
    method_for,
)
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager
from llamatelemetry_transformers.errors import QuantizationError, QuantizationUnavailableError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = "the quick brown fox"


def _greedy(model: Any, tokenizer: Any, n: int = 6) -> Any:
    ids = tokenizer(PROMPT, return_tensors="pt")
    return model.generate(**ids, max_new_tokens=n, do_sample=False)


def test_methods_are_found_by_quant_type() -> None:
    assert method_for("int8") == method_for("qint8") == "dynamic"
    assert method_for("nf4") == method_for("FP4") == "nf4"
    assert method_for("Q4_K_M") == method_for("q8_0") == method_for("IQ3_XXS") == method_for("F16") == "gguf"
    assert method_for("awq") is None
    assert {"dynamic", "nf4"} <= set(available_methods())


def test_dynamic_int8_through_the_pipeline(llama: Any, tokenizer: Any, tmp_path: Path) -> None:
    ctx = PipelineContext(base_model="tiny-llama")
    with InMemoryTelemetry() as telemetry:
        result = QuantizationPipeline(pipeline_ctx=ctx).run(llama, output_path=tmp_path / "tiny-int8.pt",
                                                            quant_type="int8")
        span = telemetry.span("llamatelemetry.pipeline.quantize")
        durations = telemetry.metric_points(pnames.METRIC_STAGE_DURATION)
    assert (result.method, result.quant_type) == ("dynamic", "qint8")
    assert result.size_after_bytes is not None and result.size_before_bytes is not None
    assert result.size_after_bytes < result.size_before_bytes
    assert result.compression_ratio is not None and result.compression_ratio > 1.5
    quantized = result.model
    linear_count = sum(1 for m in llama.modules() if isinstance(m, torch.nn.Linear))
    assert sum(1 for m in quantized.modules()
               if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")) == linear_count
    assert any(isinstance(m, torch.nn.Linear) for m in llama.modules()), "the original is left as it was"
    assert _greedy(quantized, tokenizer).shape[1] == len(tokenizer(PROMPT)["input_ids"]) + 6
    attributes = span.attributes or {}
    assert attributes[pnames.QUANTIZATION_METHOD] == "dynamic"
    assert attributes[pnames.QUANTIZATION_TYPE] == "qint8"
    assert attributes[pnames.QUANTIZATION_SIZE_AFTER] == result.size_after_bytes
    assert attributes[pnames.QUANTIZATION_MODULES] == linear_count
    assert attributes[pnames.PIPELINE_ID] == ctx.pipeline_id
    assert attributes[pnames.BASE_MODEL] == "tiny-llama" and attributes[pnames.QUANTIZATION] == "int8"
    output = str((tmp_path / "tiny-int8.pt").resolve())
    assert list(attributes[pnames.OUTPUT_ARTIFACTS]) == [output] == [result.output_path]
    assert attributes[pnames.OUTPUT_ARTIFACTS_SIZE] == (tmp_path / "tiny-int8.pt").stat().st_size
    assert ctx.output_artifact == output
    assert durations[0].attributes == {pnames.STAGE: "quantize", pnames.OUTCOME: "ok"}
    # The manifest holds the output with its hash, and the saved weights load into a model quantized alike.
    saved = ArtifactManifest.load(ctx.manifest.save(tmp_path / "manifest.json"))
    roles = {Path(a.path).name: (a.kind, a.metadata["role"]) for a in saved.artifacts}
    assert roles == {"config.json": ("model_config", "input"), "model.safetensors": ("model_weights", "input"),
                     "tiny-int8.pt": ("torch_state_dict", "output")}, "the model came from a folder: its files"
    assert saved.verify().ok
    twin = transformers.AutoModelForCausalLM.from_pretrained(llama.name_or_path, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization announces its successor
        twin = torch.ao.quantization.quantize_dynamic(twin, {torch.nn.Linear}, dtype=torch.qint8)
    twin.load_state_dict(torch.load(output, weights_only=False))
    assert torch.equal(_greedy(twin, tokenizer), _greedy(quantized, tokenizer))


def test_dynamic_from_a_folder_records_its_inputs(tiny_llama_dir: Path) -> None:
    from llamatelemetry.quantization.dynamic import quantize_dynamic

    ctx = PipelineContext()
    with InMemoryTelemetry() as telemetry:
        result = quantize_dynamic(tiny_llama_dir, ctx=ctx)
        attributes = telemetry.span("llamatelemetry.pipeline.quantize").attributes or {}
    kinds = {Path(a.path).name: (a.kind, a.metadata["role"]) for a in ctx.manifest}
    assert kinds == {"config.json": ("model_config", "input"), "model.safetensors": ("model_weights", "input")}
    assert len(attributes[pnames.INPUT_ARTIFACTS]) == 2 and pnames.OUTPUT_ARTIFACTS not in attributes
    assert attributes[pnames.BASE_MODEL] == "tiny-llama"
    assert result.output_path is None and result.model is not None


def test_gpt2_conv1d_layers_are_counted_as_skipped(tiny_gpt2_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with InMemoryTelemetry() as telemetry:
        result = QuantizationPipeline().run(tiny_gpt2_dir, quant_type="int8")
        attributes = telemetry.span("llamatelemetry.pipeline.quantize").attributes or {}
    conv1d = sum(1 for m in result.model.modules() if type(m).__name__ == "Conv1D")
    assert conv1d == 8, "2 blocks x (c_attn, c_proj, c_fc, mlp c_proj)"
    assert attributes[pnames.QUANTIZATION_MODULES] == 1, "only the LM head is an nn.Linear"
    assert attributes[pnames.QUANTIZATION_MODULES_SKIPPED] == conv1d
    assert "left 8 Conv1D layers" in caplog.text


def test_a_model_without_linear_layers_is_refused_clearly() -> None:
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(QuantizationError, match=r"no torch.nn.Linear"):
            QuantizationPipeline().run(torch.nn.Sequential(torch.nn.Embedding(8, 4)), quant_type="int8")
        span = telemetry.span("llamatelemetry.pipeline.quantize")
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert (span.attributes or {})["error.type"].endswith("QuantizationError")


def test_nf4_on_the_cpu_through_the_pipeline(tiny_llama_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    bitsandbytes = pytest.importorskip("bitsandbytes", reason="pip install bitsandbytes")
    ctx = PipelineContext()
    with warnings.catch_warnings(), InMemoryTelemetry() as telemetry:
        warnings.simplefilter("ignore")  # bitsandbytes announces that it found no GPU
        result = QuantizationPipeline(pipeline_ctx=ctx).run(tiny_llama_dir, tmp_path / "nf4", quant_type="nf4",
                                                            device_map="cpu")
        span = telemetry.span("llamatelemetry.pipeline.quantize")
    assert (result.method, result.quant_type, result.engine) == ("nf4", "nf4", "bitsandbytes-cpu")
    linear = sum(1 for m in result.model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit))
    assert linear == 14 == (span.attributes or {})[pnames.QUANTIZATION_MODULES]  # 7 projections x 2 layers
    assert (span.attributes or {})[pnames.QUANTIZATION_ENGINE] == "bitsandbytes-cpu"
    assert result.size_after_bytes is not None and result.size_before_bytes is not None
    assert result.size_after_bytes < result.size_before_bytes
    # The 4-bit model still generates the requested number of tokens, and its saved folder is in the manifest.
    assert _greedy(result.model, tokenizer).shape[1] == len(tokenizer(PROMPT)["input_ids"]) + 6
    roles = {a.metadata["role"] for a in ctx.manifest}
    assert roles == {"input", "output"} and ctx.manifest.verify().ok
    assert (tmp_path / "nf4" / "config.json").is_file()


def test_nf4_without_bitsandbytes_says_how_to_install_it(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="pip install bitsandbytes") as raised:
        QuantizationPipeline().run(llama, quant_type="nf4", device_map="cpu")
    assert isinstance(raised.value, QuantizationUnavailableError)


def test_gguf_export_is_provided_and_its_absence_says_what_is_needed(llama: Any, tokenizer: Any,
                                                                     tmp_path: Path) -> None:
    from llamatelemetry.quantization.gguf import UnsupportedTokenizerError, convert_to_gguf

    sys.path.insert(0, str(Path(__file__).parent))
    from test_gguf_export import spm_style_tokenizer, tiny_model

    assert find_stage("export", "gguf").distribution == "llamatelemetry-transformers"
    # The API reference's call, with a model object and its (byte-fallback) tokenizer.
    spm = spm_style_tokenizer()
    result = convert_to_gguf(tiny_model("llama", spm), tmp_path / "model-f16.gguf", outtype="f16", tokenizer=spm)
    assert result.method == "gguf_export" and result.quant_type == "F16"
    assert Path(result.output_path or "").stat().st_size == result.size_after_bytes
    # The shared tiny tokenizer has no byte fallback: llama.cpp would abort on an unknown character, so it is refused.
    with pytest.raises(UnsupportedTokenizerError, match="byte fallback"):
        convert_to_gguf(llama, tmp_path / "tiny.gguf", tokenizer=tokenizer)
    assert not (tmp_path / "tiny.gguf").exists()
    with fresh_plugin_manager(), pytest.raises(GGUFNotAvailableError) as raised:
        convert_to_gguf(llama, tmp_path / "again.gguf", tokenizer=tokenizer)
    assert isinstance(raised.value, NotImplementedError)
    assert 'pip install "llamatelemetry-core[transformers]"' in str(raised.value)
    assert not (tmp_path / "again.gguf").exists()


def test_unknown_types_and_missing_stages(llama: Any) -> None:
    with pytest.raises(ValueError, match="int8"):
        QuantizationPipeline().run(llama, quant_type="awq")
    with pytest.raises(ValueError, match="quant_type="):
        QuantizationPipeline().run(llama)
    with fresh_plugin_manager(), pytest.raises(StageNotFoundError, match="did not register"):
        QuantizationPipeline().run(llama, quant_type="int8")


def test_without_the_plugin_the_core_path_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llamatelemetry_transformers", None)
    with pytest.raises(PluginNotInstalledError, match=r'pip install "llamatelemetry-core\[transformers\]"'):
        from llamatelemetry.quantization.nf4 import quantize_nf4  # noqa: F401


def test_pipeline_tracer_stages_nest_and_fail_loudly(tmp_path: Path) -> None:
    ctx = PipelineContext(base_model="base", adapter="lora-1")
    tracer = PipelineTracer()
    product = tmp_path / "merged.bin"
    with InMemoryTelemetry() as telemetry:
        with tracer.span_finetune(ctx) as finetune:
            with tracer.span_merge_lora(ctx) as merge:
                product.write_bytes(b"weights")
                merge.add_output(product, "merged_model")
            finetune.set_attribute("app.epochs", 3)
        with pytest.raises(RuntimeError, match="disk full"), tracer.span_export_gguf(ctx):
            raise RuntimeError("disk full")
        for stage in (tracer.span_quantize, tracer.span_benchmark, tracer.span_deploy):
            with stage(ctx):
                pass
        spans = {s.name: s for s in telemetry.spans()}
    assert set(spans) == {f"llamatelemetry.pipeline.{n}" for n in (
        "finetune", "merge_lora", "export_gguf", "quantize", "benchmark", "deploy")}
    merge_span, finetune_span = spans["llamatelemetry.pipeline.merge_lora"], spans["llamatelemetry.pipeline.finetune"]
    assert merge_span.parent is not None and merge_span.parent.span_id == finetune_span.context.span_id
    assert (finetune_span.attributes or {})["app.epochs"] == 3
    assert (merge_span.attributes or {})[pnames.ADAPTER] == "lora-1"
    failed = spans["llamatelemetry.pipeline.export_gguf"]
    assert str(failed.status.status_code) == "StatusCode.ERROR"
    assert (failed.attributes or {})["error.type"] == "RuntimeError"
    # Stages after the merge carry the product as the context's output artifact.
    assert (spans["llamatelemetry.pipeline.deploy"].attributes or {})[pnames.OUTPUT_ARTIFACT] == str(product.resolve())
    assert [a.metadata["stage"] for a in ctx.manifest] == ["merge_lora"]


@pytest.mark.gpu
def test_nf4_on_a_real_gpu(tiny_llama_dir: Path, tmp_path: Path, tokenizer: Any) -> None:
    pytest.importorskip("bitsandbytes", reason="pip install bitsandbytes")
    ctx = PipelineContext()
    result = QuantizationPipeline(pipeline_ctx=ctx).run(tiny_llama_dir, tmp_path / "nf4", quant_type="nf4")
    print(f"\nGPU {torch.cuda.get_device_name()}: nf4 {result.size_before_bytes} -> {result.size_after_bytes} bytes")
    assert result.method == "nf4" and result.size_after_bytes is not None
    assert any(type(m).__name__ == "Linear4bit" for m in result.model.modules())
    ids = tokenizer(PROMPT, return_tensors="pt").to("cuda")
    assert result.model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 4
    roles = {a.metadata["role"] for a in ctx.manifest}
    assert roles == {"input", "output"} and ctx.manifest.verify().ok
