"""llamatelemetry's Hugging Face transformers plugin.

- ``TransformersBackend``: a causal LM in this process as an ``LLMBackend`` (load, prefill and
  decode spans, real time to first token, exact token counts, CUDA peak memory), behind
  ``create_engine("transformers", model_path=...)``.
- ``instrument_transformers`` / ``uninstrument_transformers``: spans and metrics on a model's
  ``generate`` or a text-generation pipeline you already have.
- the torch GPU span enricher (``gpu``), registered through the entry point.
- ``quantize_dynamic`` (torch int8, CPU) and ``quantize_nf4`` (bitsandbytes, CUDA): quantization
  stages for ``llamatelemetry.quantization.QuantizationPipeline``.
- ``write_tiny_model`` and friends (``testing``): tiny random models for tests, no hub.

Names resolve lazily: importing the package loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TransformersBackend": "llamatelemetry_transformers.backend",
    "OpenAIPenalties": "llamatelemetry_transformers.backend",
    "instrument_transformers": "llamatelemetry_transformers.instrument",
    "uninstrument_transformers": "llamatelemetry_transformers.instrument",
    "is_instrumented": "llamatelemetry_transformers.instrument",
    "TokenClock": "llamatelemetry_transformers.generation",
    "quantize_dynamic": "llamatelemetry_transformers.quantize",
    "quantize_nf4": "llamatelemetry_transformers.quantize",
    "BitsandbytesNotInstalledError": "llamatelemetry_transformers.quantize",
    "write_tiny_model": "llamatelemetry_transformers.testing",
    "build_tiny_model": "llamatelemetry_transformers.testing",
    "train_tiny_tokenizer": "llamatelemetry_transformers.testing",
    **{name: "llamatelemetry_transformers.errors" for name in (
        "TransformersBackendError", "TransformersNotInstalledError", "ModelFolderNotFoundError", "ModelLoadError",
        "ContextOverflowError", "ChatTemplateError", "QuantizationError", "QuantizationUnavailableError")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llamatelemetry_transformers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
