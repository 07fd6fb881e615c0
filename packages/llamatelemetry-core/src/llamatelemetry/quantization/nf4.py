"""``quantize_nf4``: bitsandbytes 4-bit NF4 quantization of a transformers model, on an NVIDIA GPU.

Provided by ``llamatelemetry-transformers`` and resolved lazily. Without the plugin, importing
``quantize_nf4`` raises an ImportError whose message is: pip install "llamatelemetry-core[transformers]".
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "quantize_nf4":
        raise AttributeError(f"module 'llamatelemetry.quantization.nf4' has no attribute {name!r}")
    from llamatelemetry.plugins.catalog import load_plugin_attribute

    return load_plugin_attribute("transformers", name, f"llamatelemetry.quantization.nf4.{name}")
