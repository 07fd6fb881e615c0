"""llamatelemetry's Unsloth plugin, also reachable as ``llamatelemetry.unsloth``.

- ``load_model``, ``merge_lora_adapters``, ``export_to_llamatelemetry``: the API reference's
  Unsloth functions (load through Unsloth's ``FastLanguageModel``, merge LoRA into 16-bit weights,
  write a quantized GGUF through llamatelemetry's own export and quantize stages; no llama.cpp binary).
- ``instrument_training`` / ``uninstrument_training``: fine-tuning telemetry (model load, LoRA attach,
  ``Trainer.train`` with a log-step event per log, merge, save), on by itself while telemetry runs.
- ``run_pipeline``: fine-tune -> merge -> GGUF -> quantize -> benchmark -> deploy as one trace.

Names resolve lazily: importing the package loads neither torch, transformers, peft nor unsloth.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "llamatelemetry_unsloth.api",
    "merge_lora_adapters": "llamatelemetry_unsloth.api",
    "export_to_llamatelemetry": "llamatelemetry_unsloth.api",
    "instrument_training": "llamatelemetry_unsloth.instrument",
    "uninstrument_training": "llamatelemetry_unsloth.instrument",
    "is_instrumented": "llamatelemetry_unsloth.instrument",
    "run_pipeline": "llamatelemetry_unsloth.pipeline",
    "PipelineRun": "llamatelemetry_unsloth.pipeline",
    **{name: "llamatelemetry_unsloth.errors" for name in (
        "UnslothPluginError", "EngineNotInstalledError", "UnslothNotInstalledError", "ModelFolderNotFoundError",
        "NoLoraAdaptersError", "AdaptersNotMergedError", "OutputPathError", "UnknownQuantTypeError")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llamatelemetry_unsloth' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
