"""Server presets: llama.cpp flags for machines our users run on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: name -> (description, CudaInferenceConfig fields)
PRESETS: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    "kaggle_t4_dual": (
        "Kaggle's two T4 GPUs (15 GB each): every layer offloaded, the model split evenly",
        {"gpu_layers": 99, "tensor_split": "0.5,0.5", "ctx_size": 4096, "batch_size": 512, "flash_attn": True},
    ),
    "single_gpu": (
        "One GPU: every layer offloaded",
        {"gpu_layers": 99, "tensor_split": "1.0", "ctx_size": 4096, "batch_size": 512, "flash_attn": True},
    ),
    "cpu": (
        "CPU only: no layer offloaded",
        {"gpu_layers": 0, "tensor_split": "1.0", "ctx_size": 2048, "batch_size": 512, "flash_attn": False},
    ),
}
