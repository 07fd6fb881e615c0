"""``quantize_dynamic``: torch dynamic int8 quantization of a transformers model, on the CPU.

Provided by ``llamatelemetry-transformers`` and resolved lazily. Without the plugin, importing
``quantize_dynamic`` raises an ImportError whose message is: pip install "llamatelemetry-core[transformers]".
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "quantize_dynamic":
        raise AttributeError(f"module 'llamatelemetry.quantization.dynamic' has no attribute {name!r}")
    from llamatelemetry.plugins.catalog import load_plugin_attribute

    return load_plugin_attribute("transformers", name, f"llamatelemetry.quantization.dynamic.{name}")
