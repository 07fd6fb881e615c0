"""Backends: the ``LLMBackend`` protocol and, resolved lazily from their plugins, our implementations.

``LlamaCppBackend`` comes from ``llamatelemetry-llamacpp`` and ``TransformersBackend`` from
``llamatelemetry-transformers``; without the plugin, importing one raises an ImportError whose
message is the install command.
"""

from __future__ import annotations

from typing import Any

from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend

__all__ = ["LLMBackend", "InferenceRequest", "InferenceResult", "LlamaCppBackend", "TransformersBackend"]

_PLUGIN_BACKENDS = {"LlamaCppBackend": "llamacpp", "TransformersBackend": "transformers"}


def __getattr__(name: str) -> Any:
    extra = _PLUGIN_BACKENDS.get(name)
    if extra is None:
        raise AttributeError(f"module 'llamatelemetry.backends' has no attribute {name!r}")
    from llamatelemetry.plugins.catalog import load_plugin_attribute

    return load_plugin_attribute(extra, name, f"llamatelemetry.backends.{name}")
