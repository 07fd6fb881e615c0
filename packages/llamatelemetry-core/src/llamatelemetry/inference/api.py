"""``create_engine``: a backend by name, resolved through plugins, wrapped in an ``InferenceEngine``."""

from __future__ import annotations

from typing import Any

from llamatelemetry.errors import BackendNotFoundError, BackendStartError
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.types import CudaInferenceConfig

__all__ = ["create_engine", "available_backends"]


def available_backends() -> list[str]:
    """Names of the installed backends (aliases included)."""
    from llamatelemetry.plugins import get_plugin_manager

    return sorted(get_plugin_manager().backends())


def create_engine(
    backend: str,
    llama_server_url: str | None = None,
    config: CudaInferenceConfig | None = None,
    **options: Any,
) -> InferenceEngine:
    """Create an engine for the backend named ``backend`` (``"llama.cpp"``, ``"transformers"``, or a plugin's).

    ``llama_server_url`` and ``config`` are ordinary backend options, passed to the backend
    factory when given, with any other keyword arguments. The engine is not started: call
    ``start()`` or use ``with``. An unknown backend raises ``BackendNotFoundError`` listing the
    installed ones and, when one of the core's extras provides it, the install command; a backend
    that cannot be created raises ``BackendStartError``.
    """
    from llamatelemetry.plugins import get_plugin_manager
    from llamatelemetry.plugins.extras import install_hint

    if not isinstance(backend, str) or not backend.strip():
        raise TypeError("create_engine(backend=...) needs a backend name such as 'llama.cpp' or 'transformers'.")
    if config is not None and not isinstance(config, CudaInferenceConfig):
        raise TypeError(f"config must be a CudaInferenceConfig, not {type(config).__name__}.")
    registry = get_plugin_manager().backends()
    key = backend.strip().lower()
    spec = registry.get(key)
    if spec is None:
        names = sorted({s.name for s in registry.values()})
        raise BackendNotFoundError(backend, names, install_hint(f"backend:{key}"))
    options = dict(options)
    if llama_server_url is not None:
        options["llama_server_url"] = llama_server_url
    if config is not None:
        options["config"] = config
    try:
        factory = spec.load()
    except Exception as exc:
        raise BackendStartError(
            f"Backend {spec.name!r} from {spec.distribution} could not be imported: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        instance = factory(**options)
    except TypeError as exc:
        raise BackendStartError(f"Backend {spec.name!r} does not accept these options "
                                f"({', '.join(sorted(options)) or 'none'}): {exc}") from exc
    except Exception as exc:
        raise BackendStartError(f"Backend {spec.name!r} could not be created: {type(exc).__name__}: {exc}") from exc
    return InferenceEngine(instance, name=spec.name, provider_name=spec.provider_name, span_kind=spec.span_kind)
