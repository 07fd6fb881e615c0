"""Instrument objects you already have (a llama.cpp client or model, a transformers model).

Each helper finds the instrumentor a plugin registered (hook
``llamatelemetry_register_instrumentors``); without the plugin it raises an ImportError whose
message is the install command.
"""

from __future__ import annotations

from typing import Any, TypeVar

from llamatelemetry.errors import PluginNotInstalledError

__all__ = ["instrument", "uninstrument", "instrument_llamacpp", "instrument_transformers", "available_instrumentors"]

T = TypeVar("T")


def available_instrumentors() -> list[str]:
    """Names of the installed instrumentors."""
    from llamatelemetry.plugins import get_plugin_manager

    return sorted(get_plugin_manager().instrumentors())


def _spec(name: str) -> Any:
    from llamatelemetry.plugins import get_plugin_manager
    from llamatelemetry.plugins.catalog import extra_for_instrumentor

    spec = get_plugin_manager().instrumentors().get(name.strip().lower())
    if spec is None:
        known = extra_for_instrumentor(name)
        if known is not None:
            raise PluginNotInstalledError(f"instrumenting {name}", known.extra, distribution=known.distribution)
        installed = ", ".join(available_instrumentors()) or "none"
        raise LookupError(f"No instrumentor named {name!r} is installed (installed instrumentors: {installed}).")
    return spec


def instrument(name: str, target: T, **options: Any) -> T:
    """Instrument ``target`` in place with the instrumentor named ``name``; doing it twice is harmless."""
    result = _spec(name).load()(target, **options)
    return target if result is None else result  # type: ignore[no-any-return]


def uninstrument(name: str, target: Any) -> None:
    """Undo ``instrument(name, target)``, restoring the original methods."""
    undo = _spec(name).load_uninstrument()
    if undo is None:
        raise NotImplementedError(f"The {name!r} instrumentor cannot be undone (it registered no uninstrument).")
    undo(target)


def instrument_llamacpp(target: T, **options: Any) -> T:
    """Instrument a ``llama_cpp.Llama`` or a ``LlamaCppClient`` (needs ``llamatelemetry-core[llamacpp]``)."""
    return instrument("llama_cpp", target, **options)


def instrument_transformers(model: T, tokenizer: Any = None, **options: Any) -> T:
    """Instrument a transformers model's ``generate`` (needs ``llamatelemetry-core[transformers]``)."""
    if tokenizer is not None:
        options["tokenizer"] = tokenizer
    return instrument("transformers", model, **options)
