"""``quantize_dynamic``: torch dynamic int8 quantization of a transformers model, on the CPU.

Provided by the transformers plugin, resolved lazily through the core's packaging metadata
(entry-point group ``llamatelemetry.extras``). Without the plugin, importing ``quantize_dynamic`` raises
an ImportError whose message is: pip install "llamatelemetry-core[transformers]".
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "quantize_dynamic":
        raise AttributeError(f"module 'llamatelemetry.quantization.dynamic' has no attribute {name!r}")
    from llamatelemetry.plugins.extras import load_feature

    return load_feature(f"{__name__}.{name}")
