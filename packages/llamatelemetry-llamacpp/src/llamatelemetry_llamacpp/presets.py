"""Server presets: llama.cpp flags for kinds of machine (Kaggle's come from the Kaggle plugin)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: name -> (description, CudaInferenceConfig fields). Machine-specific presets (``kaggle_t4_dual``,
#: ``kaggle_t4_single``, ``kaggle_p100``) are registered by the plugin for that platform, through
#: ``llamatelemetry_register_presets``; ``ServerManager`` and ``quick_start`` read them from the registry.
PRESETS: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    "single_gpu": (
        "One GPU: every layer offloaded",
        {"gpu_layers": 99, "tensor_split": "1.0", "ctx_size": 4096, "batch_size": 512, "flash_attn": True},
    ),
    "cpu": (
        "CPU only: no layer offloaded",
        {"gpu_layers": 0, "tensor_split": "1.0", "ctx_size": 2048, "batch_size": 512, "flash_attn": False},
    ),
}
