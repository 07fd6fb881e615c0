"""Backends: the ``LLMBackend`` protocol and, resolved lazily from their plugins, our implementations.

``LlamaCppBackend``, ``TransformersBackend`` and any other name the core's packaging metadata
declares under ``llamatelemetry.backends.`` (entry-point group ``llamatelemetry.extras``) come from
the plugin that provides them; without the plugin, importing one raises ``PluginNotInstalledError``
(an ImportError) whose message is the install command.
"""

from __future__ import annotations

from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.plugins.extras import module_attributes

__all__ = ["LLMBackend", "InferenceRequest", "InferenceResult"]


# The names plugins provide this module, resolved on first access.
__getattr__, __dir__ = module_attributes(__name__, __all__)
