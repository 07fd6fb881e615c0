"""Instrument objects you already have (a llama.cpp client or model, a transformers model).

``instrument(name, target)`` finds the instrumentor a plugin registered (hook
``llamatelemetry_register_instrumentors``). The named helpers of the API reference
(``instrument_llamacpp``, ``instrument_transformers``) are the plugins' own functions, resolved
lazily through the core's packaging metadata (entry-point group ``llamatelemetry.extras``). Without
the plugin, either raises ``PluginNotInstalledError`` (an ImportError) whose message is the install
command.
"""

from __future__ import annotations

from typing import Any, TypeVar

from llamatelemetry.plugins.extras import module_attributes

__all__ = ["instrument", "uninstrument", "available_instrumentors"]

T = TypeVar("T")


def available_instrumentors() -> list[str]:
    """Names of the installed instrumentors."""
    from llamatelemetry.plugins import get_plugin_manager

    return sorted(get_plugin_manager().instrumentors())


def _spec(name: str) -> Any:
    from llamatelemetry.plugins import get_plugin_manager
    from llamatelemetry.plugins.extras import find_feature

    key = name.strip().lower()
    spec = get_plugin_manager().instrumentors().get(key)
    if spec is None:
        found = find_feature(f"instrumentor:{key}")
        if found is not None and not found.is_installed():
            raise found.not_installed_error(f"instrumenting {name}")
        installed = ", ".join(available_instrumentors()) or "none"
        hint = ""
        if found is not None:
            from llamatelemetry.plugins.extras import install_hint

            hint = f" Install it with: {install_hint(f'instrumentor:{key}')}"
        raise LookupError(f"No instrumentor named {name!r} is installed (installed instrumentors: {installed}).{hint}")
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


# The names plugins provide this module, resolved on first access.
__getattr__, __dir__ = module_attributes(__name__, __all__)
