"""The optional libraries (torch, transformers, peft, unsloth), imported only by the code that needs them, as ``Any``.

Importing them through ``importlib`` keeps ``import llamatelemetry_unsloth`` light and their types
out of ours; a missing one is an ImportError whose message is the install command.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from llamatelemetry_unsloth.errors import EngineNotInstalledError, UnslothNotInstalledError

__all__ = ["import_engine", "import_unsloth", "loaded", "unsloth_available"]


def import_engine(name: str, feature: str) -> Any:
    """``torch``, ``transformers`` or ``peft`` (a dotted module of one), or the install command as an ImportError."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != name.split(".")[0]:
            raise  # the library is there but one of its own imports failed: that error is the useful one
        raise EngineNotInstalledError(name.split(".")[0], feature) from exc


def import_unsloth(feature: str) -> Any:
    """The ``unsloth`` module, or ``UnslothNotInstalledError`` with the install command and why it failed."""
    try:
        module = importlib.import_module("unsloth")
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        # Unsloth raises RuntimeError/NotImplementedError at import on setups it cannot run on.
        raise UnslothNotInstalledError(feature, exc) from exc
    if getattr(module, "FastLanguageModel", None) is None:
        # A folder named "unsloth" on sys.path imports as an empty namespace package: not Unsloth.
        where = list(getattr(module, "__path__", []))
        raise UnslothNotInstalledError(feature, ImportError(f"the 'unsloth' found ({where}) has no FastLanguageModel"))
    return module


def unsloth_available() -> bool:
    """Whether ``unsloth`` is installed (found on the path; not imported)."""
    import importlib.util

    return "unsloth" in sys.modules or importlib.util.find_spec("unsloth") is not None


def loaded(name: str) -> Any | None:
    """The module ``name`` if something already imported it, else ``None`` (never imports it)."""
    return sys.modules.get(name)
