"""``quantize_nf4``: bitsandbytes 4-bit NF4 quantization of a transformers model, on a CUDA GPU or the CPU.

Provided by the transformers plugin, resolved lazily through the core's packaging metadata
(entry-point group ``llamatelemetry.extras``). Without the plugin, importing ``quantize_nf4`` raises
an ImportError whose message is: pip install "llamatelemetry-core[transformers]".
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "quantize_nf4":
        raise AttributeError(f"module 'llamatelemetry.quantization.nf4' has no attribute {name!r}")
    from llamatelemetry.plugins.extras import load_feature

    return load_feature(f"{__name__}.{name}")
