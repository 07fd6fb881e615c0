"""The optional engine libraries, imported only by the code that needs them, as ``Any``.

torch and transformers are large and untyped for our purposes: importing them through
``importlib`` keeps ``import llamatelemetry_transformers`` light and keeps their types out of ours.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from llamatelemetry_transformers.errors import TransformersNotInstalledError

__all__ = ["import_torch", "import_transformers", "loaded_torch", "dtype_name", "device_name"]


def _import(name: str, feature: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != name.split(".")[0]:
            raise  # the library is there but one of its own imports failed: that error is the useful one
        raise TransformersNotInstalledError(name.split(".")[0], feature) from exc


def import_torch(feature: str = "TransformersBackend") -> Any:
    """``torch``, or the install command as an ImportError."""
    return _import("torch", feature)


def import_transformers(feature: str = "TransformersBackend") -> Any:
    """``transformers`` (and torch), or the install command as an ImportError."""
    import_torch(feature)
    return _import("transformers", feature)


def loaded_torch() -> Any | None:
    """torch if something already imported it, else ``None`` (never imports it)."""
    return sys.modules.get("torch")


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def device_name(device: Any) -> str:
    """``device(type='cuda', index=0)`` -> ``"cuda:0"``."""
    return str(device)
