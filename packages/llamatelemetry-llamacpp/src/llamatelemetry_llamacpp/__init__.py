"""llamatelemetry's llama.cpp plugin, also reachable as ``llamatelemetry.llama``.

- ``LlamaCppClient`` / ``AsyncLlamaCppClient``: the llama.cpp server's API with CLIENT spans.
- ``ServerManager`` / ``quick_start``: start and stop a llama.cpp server (xllamacpp, llama-server,
  llama_cpp.server).
- ``LlamaCppBackend`` (in-process, llama-cpp-python) and ``LlamaCppServerBackend`` (over a server),
  both ``LLMBackend`` s behind ``create_engine("llama.cpp", ...)``.
- ``instrument_llamacpp`` / ``uninstrument_llamacpp``: patch an existing ``llama_cpp.Llama``.
- ``LlamaCppServerMetrics``: the server's ``/metrics`` and ``/slots`` as OpenTelemetry instruments.
- ``write_tiny_gguf``: tiny deterministic GGUF models for tests, no hub needed.

Names resolve lazily: importing the package loads neither httpx nor llama.cpp.
"""

from __future__ import annotations

import importlib
from typing import Any

from llamatelemetry_llamacpp.presets import PRESETS

__version__ = "0.1.0"

_LAZY = {
    "LlamaCppClient": "llamatelemetry_llamacpp.client",
    "AsyncLlamaCppClient": "llamatelemetry_llamacpp.client",
    "ServerManager": "llamatelemetry_llamacpp.server",
    "quick_start": "llamatelemetry_llamacpp.server",
    "available_server_kinds": "llamatelemetry_llamacpp.server",
    "LlamaCppBackend": "llamatelemetry_llamacpp.backend",
    "LlamaCppServerBackend": "llamatelemetry_llamacpp.server_backend",
    "instrument_llamacpp": "llamatelemetry_llamacpp.instrument",
    "uninstrument_llamacpp": "llamatelemetry_llamacpp.instrument",
    "is_instrumented": "llamatelemetry_llamacpp.instrument",
    "check_gguf_file": "llamatelemetry_llamacpp.backend",
    "LlamaCppServerMetrics": "llamatelemetry_llamacpp.metrics_bridge",
    "write_tiny_gguf": "llamatelemetry_llamacpp.testing",
    **{name: "llamatelemetry_llamacpp.errors" for name in (
        "LlamaCppError", "LlamaCppHTTPError", "LlamaCppServerError", "AuthenticationError",
        "ContextSizeExceededError", "ServerFeatureDisabledError", "ServerLoadingError",
        "ServerUnavailableError", "ServerTimeoutError", "StreamProtocolError")},
    **{name: "llamatelemetry_llamacpp.backend_errors" for name in (
        "LlamaCppBackendError", "LlamaCppNotInstalledError", "ModelFileNotFoundError", "NotAGGUFError",
        "TruncatedModelError", "ModelLoadError", "ContextOverflowError", "ChatTemplateError")},
    **{name: "llamatelemetry_llamacpp.server" for name in (
        "ServerStartError", "PortInUseError", "ServerKindUnavailableError")},
}

__all__ = ["PRESETS", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llamatelemetry_llamacpp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
