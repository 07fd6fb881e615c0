"""llamatelemetry's llama.cpp plugin.

Registers the llama.cpp server presets (``kaggle_t4_dual``, ``single_gpu``, ``cpu``). The
backend, server client and server manager are reached as ``llamatelemetry.llama``.
"""

from __future__ import annotations

from llamatelemetry_llamacpp.presets import PRESETS

__version__ = "0.1.0"

__all__ = ["PRESETS", "__version__"]
