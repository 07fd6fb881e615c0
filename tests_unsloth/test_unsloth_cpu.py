"""The Unsloth plugin with real Unsloth on the CPU: load_model, FastLanguageModel LoRA, SFTTrainer, merge, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.pipeline import PipelineContext
from llamatelemetry.pipeline import attributes as pnames
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth.testing import SENTENCE

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _train(model: Any, tokenizer: Any, fast_language_model: Any, tmp_path: Path, steps: int = 6) -> Any:
    model = fast_language_model.get_peft_model(model, r=8, lora_alpha=16, lora_dropout=0, bias="none",
                                               target_modules=TARGETS, random_state=0)
    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=steps, per_device_train_batch_size=2,
                           learning_rate=5e-3, logging_steps=2, save_strategy="no", report_to=[], max_length=32,
                           dataset_num_proc=1, disable_tqdm=True, seed=0)
    trainer = trl.SFTTrainer(model=model, processing_class=tokenizer, args=config,
                             train_dataset=datasets.Dataset.from_dict({"text": [SENTENCE] * 8}))
    trainer.train()
    return model


def test_a_4bit_unsloth_fine_tune_is_traced_and_merges_into_a_reloaded_base(
        tiny_llama_dir: Path, fast_language_model: Any, tmp_path: Path) -> None:
    from llamatelemetry.unsloth import load_model, merge_lora_adapters

    ctx = PipelineContext(base_model="tiny-llama-256")
    with InMemoryTelemetry() as telemetry:
        model, tokenizer = load_model(str(tiny_llama_dir), load_in_4bit=True, max_seq_length=64)
        peft_model = _train(model, tokenizer, fast_language_model, tmp_path)
        layer = next(module for name, module in peft_model.named_modules()
                     if name.endswith("layers.0.self_attn.q_proj"))
        delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).float() * layer.scaling["default"]
        merged = merge_lora_adapters(peft_model, ctx=ctx, save_path=tmp_path / "merged")
        spans = telemetry.spans()

    def one(name: str) -> Any:
        found = [s for s in spans if s.name == name]
        assert found, f"no {name} span in {[s.name for s in spans]}"
        return found[0]

    load = one(names.SPAN_MODEL_LOAD).attributes
    assert load[names.LOADER] == "unsloth" and load[names.MODEL_LOAD_IN_4BIT] is True
    assert load[names.MODEL] == "tiny-llama-256" and load[names.MODEL_PARAMETERS] > 1_000_000
    assert load[names.MEMORY_PEAK] > 0
    attach = one(names.SPAN_ADAPTER_ATTACH).attributes
    assert attach[names.LORA_RANK] == 8 and list(attach[names.LORA_TARGET_MODULES]) == sorted(TARGETS)
    assert attach[names.TRAINABLE_PARAMETERS] == 2 * 8 * (2 * (256 + 256) + 2 * (256 + 128))
    train = one(names.SPAN_TRAIN)
    assert train.attributes[names.TRAINER] == "SFTTrainer" and train.attributes[names.STEP] == 6
    steps = [e.attributes[names.STEP] for e in train.events if e.name == names.EVENT_LOG_STEP]
    assert steps == [2, 4, 6]
    assert all(e.attributes[names.LOSS] > 0 for e in train.events if e.name == names.EVENT_LOG_STEP)

    stage = one(pnames.SPAN_PREFIX + pnames.STAGE_MERGE_LORA)
    assert stage.status.status_code.name != "ERROR"
    assert stage.attributes[names.MERGE_RELOADED_BASE] is True
    assert stage.attributes[pnames.PIPELINE_ID] == ctx.pipeline_id
    assert any(e.name == "llamatelemetry.train.merge.reload_base" for e in stage.events)
    # The merge is 16-bit (here float32) weights: the unquantized base plus the trained adapter's delta.
    assert not any(type(m).__name__ in ("Linear4bit",) or hasattr(m, "lora_A") for m in merged.modules())
    from safetensors.torch import load_file

    base = load_file(str(tiny_llama_dir / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    merged_weight = merged.model.layers[0].self_attn.q_proj.weight.detach().float()
    assert torch.allclose(merged_weight, base.float() + delta.cpu(), atol=1e-4)
    kinds = {Path(a.path).name: a.kind for a in ctx.manifest.artifacts}
    assert kinds == {"model.safetensors": "model_weights", "config.json": "model_config"}


def test_a_16bit_unsloth_model_merges_in_place_and_exports_without_llama_cpp_binaries(
        tiny_llama_dir: Path, fast_language_model: Any, tmp_path: Path) -> None:
    from llamatelemetry.unsloth import export_to_llamatelemetry, load_model, merge_lora_adapters

    ctx = PipelineContext(base_model="tiny-llama-256")
    with InMemoryTelemetry() as telemetry:
        model, tokenizer = load_model(str(tiny_llama_dir), load_in_4bit=False, max_seq_length=64)
        merged = merge_lora_adapters(_train(model, tokenizer, fast_language_model, tmp_path, steps=2), ctx=ctx)
        # Q8_0: the gguf package's quantizer, as this environment has no llama-cpp-python (and no llama.cpp binary).
        written = export_to_llamatelemetry(model=merged, tokenizer=tokenizer, output_path=tmp_path / "model-q8_0.gguf",
                                           pipeline_ctx=ctx, quant_type="Q8_0")
        stage = telemetry.span(pnames.SPAN_PREFIX + pnames.STAGE_MERGE_LORA)
        exported = telemetry.span(pnames.SPAN_PREFIX + pnames.STAGE_EXPORT_GGUF)
        quantized = telemetry.span(pnames.SPAN_PREFIX + pnames.STAGE_QUANTIZE)
    assert stage.attributes[names.MERGE_RELOADED_BASE] is False
    assert stage.attributes[names.MERGED_MODULES] == 2 * len(TARGETS)
    assert not any(hasattr(m, "lora_A") for m in merged.modules())
    assert exported.status.status_code.name != "ERROR" and quantized.status.status_code.name != "ERROR"
    assert quantized.attributes[pnames.QUANTIZATION_TYPE] == "Q8_0"
    assert Path(written).read_bytes()[:4] == b"GGUF" and Path(written).name == "model-q8_0.gguf"
    assert ctx.manifest.get(written) is not None and ctx.manifest.verify().ok


def test_load_model_names_a_missing_folder(tmp_path: Path) -> None:
    from llamatelemetry.unsloth import load_model
    from llamatelemetry_unsloth.errors import ModelFolderNotFoundError

    with InMemoryTelemetry() as telemetry:
        with pytest.raises(ModelFolderNotFoundError, match="save_pretrained"):
            load_model(str(tmp_path / "nowhere"), load_in_4bit=True)
        span = telemetry.span(names.SPAN_MODEL_LOAD)
    assert span.status.status_code.name == "ERROR"


def test_from_pretrained_without_load_in_4bit_records_unsloths_default(tiny_llama_dir: Path,
                                                                       fast_language_model: Any) -> None:
    import inspect

    # The default the span must record is Unsloth's own (True: 4-bit QLoRA), read from its signature here.
    default = inspect.signature(fast_language_model.from_pretrained).parameters["load_in_4bit"].default
    assert default is True
    with InMemoryTelemetry() as telemetry:
        fast_language_model.from_pretrained(model_name=str(tiny_llama_dir), max_seq_length=64)  # the default
        fast_language_model.from_pretrained(str(tiny_llama_dir), 64, None, False)  # passed by position
        loads = [s for s in telemetry.spans() if s.name == names.SPAN_MODEL_LOAD]
    assert [s.attributes[names.LOADER] for s in loads] == ["unsloth", "unsloth"]
    assert [s.attributes[names.MODEL_LOAD_IN_4BIT] for s in loads] == [True, False]
    # Recorded when the load starts, not only read back from the model: a load that fails says what was asked too.
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(OSError, match="nowhere"):  # Unsloth's own error for a folder that is not there
            fast_language_model.from_pretrained(model_name=str(tiny_llama_dir / "nowhere"), max_seq_length=64)
        failed = telemetry.span(names.SPAN_MODEL_LOAD)
    assert failed.status.status_code.name == "ERROR" and failed.attributes[names.MODEL_LOAD_IN_4BIT] is True
