"""llamatelemetry: OpenTelemetry-native observability for LLM inference on GPUs.

``import llamatelemetry`` is cheap and has no side effects: no plugin loading, no network, no
OpenTelemetry SDK, no torch. Plugins load on the first ``init()`` or first use.

Quick start::

    import llamatelemetry
    llamatelemetry.init(service_name="my-app", otlp_endpoint="http://localhost:4317")

    @llamatelemetry.trace()
    def answer(question): ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llamatelemetry._version import __version__

if TYPE_CHECKING:
    from llamatelemetry._runtime import Telemetry, current, get_meter, get_tracer, init, shutdown
    from llamatelemetry.decorators import span, trace, workflow
    from llamatelemetry.plugins import hookimpl, register_plugin, unregister_plugin

__all__ = [
    "__version__",
    "Telemetry",
    "current",
    "get_meter",
    "get_tracer",
    "hookimpl",
    "init",
    "register_plugin",
    "shutdown",
    "span",
    "trace",
    "unregister_plugin",
    "workflow",
]

# Public names resolve on first access, so that importing the package stays light.
_LAZY: dict[str, str] = {
    "Telemetry": "llamatelemetry._runtime",
    "current": "llamatelemetry._runtime",
    "get_meter": "llamatelemetry._runtime",
    "get_tracer": "llamatelemetry._runtime",
    "init": "llamatelemetry._runtime",
    "shutdown": "llamatelemetry._runtime",
    "span": "llamatelemetry.decorators",
    "trace": "llamatelemetry.decorators",
    "workflow": "llamatelemetry.decorators",
    "hookimpl": "llamatelemetry.plugins",
    "register_plugin": "llamatelemetry.plugins",
    "unregister_plugin": "llamatelemetry.plugins",
}

# Subpackages that belong to plugins: ``llamatelemetry.llama`` and friends import the plugin.
_SUBMODULES = {
    "artifacts", "backends", "bench", "cli", "config", "decorators", "distributed", "errors", "gpu", "inference",
    "otel", "pipeline", "plugins", "quantization", "sdk", "semconv", "testing", "llama", "nccl", "unsloth", "kaggle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"llamatelemetry.{name}")
    raise AttributeError(f"module 'llamatelemetry' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
