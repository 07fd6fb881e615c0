"""Backends: the ``LLMBackend`` protocol and, resolved lazily from their plugins, our implementations.

``LlamaCppBackend``, ``TransformersBackend`` and any other name the core's packaging metadata
declares under ``llamatelemetry.backends.`` (entry-point group ``llamatelemetry.extras``) come from
the plugin that provides them; without the plugin, importing one raises ``PluginNotInstalledError``
(an ImportError) whose message is the install command.
"""

from __future__ import annotations

from typing import Any

from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend

__all__ = ["LLMBackend", "InferenceRequest", "InferenceResult"]


def __getattr__(name: str) -> Any:
    from llamatelemetry.plugins.extras import find_feature, load_feature

    key = f"{__name__}.{name}"
    if find_feature(key) is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return load_feature(key)


def __dir__() -> list[str]:
    from llamatelemetry.plugins.extras import provided_features

    prefix = f"{__name__}."
    return sorted({*__all__, *(key[len(prefix):] for key in provided_features() if key.startswith(prefix))})
