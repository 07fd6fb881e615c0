"""The Unsloth plugin's fine-tuning telemetry on the plain PEFT + transformers path (no Unsloth): real training."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llamatelemetry
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth.testing import SENTENCE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class _Repeat(torch.utils.data.Dataset):  # type: ignore[misc]
    """The memorised sentence, ``n`` times (a real dataset, just a small one)."""

    def __init__(self, tokenizer: Any, n: int, poison_at: int | None = None) -> None:
        encoded = tokenizer(f"{SENTENCE}{tokenizer.eos_token}", return_tensors="pt")
        self.example = {"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
                        "labels": encoded["input_ids"][0].clone()}
        self.n = n
        self.poison_at = poison_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index == self.poison_at:
            return {**self.example, "input_ids": torch.full_like(self.example["input_ids"], 10_000)}  # past vocab
        return self.example


def _args(tmp_path: Path, steps: int, logging_steps: int) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=1, learning_rate=5e-3,
        lr_scheduler_type="constant", logging_steps=logging_steps, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)


def _load(tiny_llama_dir: Path) -> tuple[Any, Any]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True)
    return model, tokenizer


def _lora(model: Any) -> Any:
    torch.manual_seed(0)
    return peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                                      task_type="CAUSAL_LM"))


def test_load_attach_train_merge_save_are_traced(tiny_llama_dir: Path, tmp_path: Path) -> None:
    with InMemoryTelemetry() as telemetry:
        model, tokenizer = _load(tiny_llama_dir)
        base_parameters = sum(p.numel() for p in model.parameters())
        peft_model = _lora(model)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        trainer = transformers.Trainer(model=peft_model, args=_args(tmp_path, 12, 3),
                                       train_dataset=_Repeat(tokenizer, 12))
        callbacks_before = len(trainer.callback_handler.callbacks)
        output = trainer.train()
        peft_model.save_pretrained(tmp_path / "adapter")
        merged = peft_model.merge_and_unload()
        spans = {span.name: span for span in telemetry.spans()}
        points = {point.name: point for point in telemetry.metric_points()
                  if point.name.startswith("llamatelemetry.train")}

    load = spans[names.SPAN_MODEL_LOAD].attributes or {}
    assert load[names.LOADER] == "transformers" and load[names.MODEL] == "tiny-llama-256"
    assert load[names.MODEL_DTYPE] == "float32" and load[names.MODEL_LOAD_IN_4BIT] is False
    assert load[names.MODEL_PARAMETERS] == base_parameters
    assert 0 < load[names.MODEL_LOAD_DURATION] < 30
    assert load[names.MEMORY_PEAK] > 0 and load[names.MEMORY_PEAK_KIND] == "process_rss"

    attach = spans[names.SPAN_ADAPTER_ATTACH].attributes or {}
    assert attach[names.ADAPTER_TYPE] == "LORA" and attach[names.ADAPTER_NAME] == "default"
    assert (attach[names.LORA_RANK], attach[names.LORA_ALPHA]) == (8, 16.0)
    assert list(attach[names.LORA_TARGET_MODULES]) == sorted(TARGETS)
    # r=8 on each of 2 layers: q and o are 256 -> 256, k and v 256 -> 128 (2 key-value heads of 64).
    assert attach[names.TRAINABLE_PARAMETERS] == trainable == 2 * 8 * (2 * (256 + 256) + 2 * (256 + 128))
    assert attach[names.TOTAL_PARAMETERS] > trainable

    train = spans[names.SPAN_TRAIN]
    attributes = train.attributes or {}
    assert attributes[names.TRAINER] == "Trainer" and attributes[names.MAX_STEPS] == 12
    assert attributes[names.STEP] == output.global_step == 12
    assert attributes[names.LOSS] == pytest.approx(output.training_loss)
    assert attributes[names.LORA_RANK] == 8
    tokens_per_example = len(tokenizer(f"{SENTENCE}{tokenizer.eos_token}")["input_ids"])
    assert attributes[names.TOKENS] == 12 * tokens_per_example
    events = [event for event in train.events if event.name == names.EVENT_LOG_STEP]
    assert [e.attributes[names.STEP] for e in events] == [3, 6, 9, 12]  # type: ignore[index]
    for event in events:
        values = event.attributes or {}
        assert values[names.LOSS] > 0 and values[names.LEARNING_RATE] == pytest.approx(5e-3)
        assert values[names.GRAD_NORM] >= 0 and values[names.TOKENS_PER_SECOND] > 0
    assert events[-1].attributes[names.LOSS] < events[0].attributes[names.LOSS]  # type: ignore[index]
    assert len(trainer.callback_handler.callbacks) == callbacks_before, "the callback is removed after train()"
    assert "training_step" not in vars(trainer), "the trainer's own training_step is back"

    assert points[names.METRIC_STEPS].value == 12 and points[names.METRIC_STEPS].unit == "{step}"
    assert points[names.METRIC_TOKENS].value == 12 * tokens_per_example
    assert points[names.METRIC_TOKENS].unit == "{token}"
    assert points[names.METRIC_LOSS].value == pytest.approx(events[-1].attributes[names.LOSS])  # type: ignore[index]
    assert points[names.METRIC_THROUGHPUT].unit == "{token}/s" and points[names.METRIC_THROUGHPUT].value > 0
    assert points[names.METRIC_DURATION].unit == "s" and points[names.METRIC_DURATION].value == 1
    assert points[names.METRIC_DURATION].attributes[names.OUTCOME] == "ok"
    assert points[names.METRIC_MODEL_LOAD_DURATION].unit == "s"

    save = spans[names.SPAN_SAVE].attributes or {}
    written = sum(p.stat().st_size for p in (tmp_path / "adapter").rglob("*") if p.is_file())
    assert save[names.SAVE_KIND] == "adapter" and save[names.SAVE_SIZE] == written
    merge = spans[names.SPAN_MERGE].attributes or {}
    assert merge[names.MERGED_MODULES] == 2 * len(TARGETS) and merge[names.MERGE_METHOD] == "merged_16bit"
    assert not any(hasattr(m, "lora_A") for m in merged.modules())


def test_sft_trainer_is_traced_like_trainer(tiny_llama_dir: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    model, tokenizer = _load(tiny_llama_dir)
    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=4, per_device_train_batch_size=2,
                           learning_rate=5e-3, logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
                           disable_tqdm=True, dataloader_num_workers=0, max_length=32, seed=0)
    with InMemoryTelemetry() as telemetry:
        trainer = trl.SFTTrainer(model=_lora(model), args=config, processing_class=tokenizer,
                                 train_dataset=datasets.Dataset.from_dict({"text": [SENTENCE] * 8}))
        trainer.train()
        train = telemetry.span(names.SPAN_TRAIN)
    attributes = train.attributes or {}
    assert attributes[names.TRAINER] == "SFTTrainer" and attributes[names.STEP] == 4
    assert attributes[names.LORA_RANK] == 8 and attributes[names.TOKENS] > 0
    steps = [e.attributes[names.STEP] for e in train.events if e.name == names.EVENT_LOG_STEP]  # type: ignore[index]
    assert steps == [2, 4]


def test_a_failing_train_ends_its_span_in_error_and_cleans_up(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = _load(tiny_llama_dir)
    trainer = transformers.Trainer(model=_lora(model), args=_args(tmp_path, 4, 1),
                                   train_dataset=_Repeat(tokenizer, 4, poison_at=2))
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(IndexError):
            trainer.train()
        train = telemetry.span(names.SPAN_TRAIN)
        duration = telemetry.metric_points(names.METRIC_DURATION)
    assert train.status.status_code.name == "ERROR"
    assert (train.attributes or {})["error.type"] == "IndexError"
    assert duration[0].attributes[names.OUTCOME] == "error"
    assert "training_step" not in vars(trainer)
    assert not any(type(c).__name__ == "LlamaTelemetryCallback" for c in trainer.callback_handler.callbacks)


def test_nothing_is_patched_or_recorded_while_telemetry_is_off(tiny_llama_dir: Path, tmp_path: Path) -> None:
    original_train = transformers.Trainer.__dict__["train"]
    with InMemoryTelemetry():
        assert transformers.Trainer.__dict__["train"] is not original_train, "patched while telemetry runs"
    assert transformers.Trainer.__dict__["train"] is original_train, "restored at shutdown"
    assert peft.PeftModel.__dict__["__init__"].__name__ == "__init__"
    assert not getattr(peft.PeftModel.__dict__["__init__"], "_llamatelemetry_patch", False)
    model, tokenizer = _load(tiny_llama_dir)
    trainer = transformers.Trainer(model=_lora(model), args=_args(tmp_path, 2, 1), train_dataset=_Repeat(tokenizer, 2))
    assert trainer.train().global_step == 2
    assert llamatelemetry.current() is None


def test_the_plugin_imports_without_the_fine_tuning_libraries() -> None:
    script = textwrap.dedent("""
        import sys
        import llamatelemetry_unsloth, llamatelemetry_unsloth.plugin
        from llamatelemetry.unsloth import load_model, merge_lora_adapters, export_to_llamatelemetry
        from llamatelemetry.testing import InMemoryTelemetry
        with InMemoryTelemetry():
            heavy = [m for m in ("torch", "transformers", "peft", "trl", "unsloth") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_library_imported_after_init_is_patched_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry_unsloth import instrument

    # A real module imported through the real import system, standing in for peft imported after init().
    (tmp_path / "late_library.py").write_text(
        "class Tuner:\n    def merge_and_unload(self):\n        return 'merged'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(instrument._TARGETS, "late_library",
                        lambda module: instrument._patch_tuners(type("M", (), {"BaseTuner": module.Tuner})))
    with InMemoryTelemetry() as telemetry:
        import late_library  # type: ignore[import-not-found]

        assert getattr(late_library.Tuner.__dict__["merge_and_unload"], "_llamatelemetry_patch", False)
        assert late_library.Tuner().merge_and_unload() == "merged"
        assert telemetry.span(names.SPAN_MERGE).attributes[names.MERGE_METHOD] == "merged_16bit"  # type: ignore[index]
    assert late_library.Tuner().merge_and_unload() == "merged"
    assert not getattr(late_library.Tuner.__dict__["merge_and_unload"], "_llamatelemetry_patch", False)
    assert not instrument.is_instrumented()
    sys.modules.pop("late_library", None)


def test_a_4bit_base_is_reloaded_unquantized_to_merge(tiny_llama_dir: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="pip install bitsandbytes (4-bit on the CPU needs >= 0.45)")
    from llamatelemetry.pipeline import PipelineContext
    from llamatelemetry.pipeline import attributes as pnames
    from llamatelemetry.unsloth import merge_lora_adapters

    quantization = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_compute_dtype=torch.float32)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True,
                                                             quantization_config=quantization, device_map="cpu")
    assert any(type(m).__name__ == "Linear4bit" for m in base.modules())
    lora = _lora(base)
    with torch.no_grad():  # a trained-looking adapter: B is zero right after attaching
        for module in lora.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                module.lora_B["default"].weight.normal_(0, 0.02)
    layer = lora.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    ctx = PipelineContext(base_model="tiny-llama-256")
    with InMemoryTelemetry() as telemetry:
        merged = merge_lora_adapters(lora, ctx=ctx)
        stage = telemetry.span(pnames.SPAN_PREFIX + pnames.STAGE_MERGE_LORA)
    assert stage.attributes[names.MERGE_RELOADED_BASE] is True  # type: ignore[index]
    assert stage.attributes[names.MERGE_DTYPE] == "float32"  # type: ignore[index]
    assert [e.name for e in stage.events] == ["llamatelemetry.train.merge.reload_base"]
    assert not any(type(m).__name__ == "Linear4bit" or hasattr(m, "lora_A") for m in merged.modules())
    from safetensors.torch import load_file

    original = load_file(str(tiny_llama_dir / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, original + delta, atol=1e-5)
