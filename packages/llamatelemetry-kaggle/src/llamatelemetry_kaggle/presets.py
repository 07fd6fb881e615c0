"""llama.cpp server presets for Kaggle's GPUs, and which one fits the notebook's accelerator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from llamatelemetry.plugins import PresetSpec

if TYPE_CHECKING:
    from llamatelemetry_kaggle.accelerator import Accelerator

__all__ = ["KAGGLE_PRESETS", "FLASH_ATTN_MIN_COMPUTE", "preset_specs", "choose_preset", "flash_attention_fits"]

#: llama.cpp's CUDA flash attention picks its kernel by compute capability (ggml-cuda/fattn.cu,
#: ``ggml_cuda_get_best_fattn_kernel``): tensor-core MMA kernels from Volta (7.0) and Turing (7.5),
#: so a T4 (7.5) runs it fast; below 7.0 (the P100 is 6.0) only the generic tile/vector kernels
#: remain, which are no faster than plain attention there and missing from builds made with
#: ``GGML_CUDA_NO_FA``. So: on from 7.0, off below.
FLASH_ATTN_MIN_COMPUTE: Final = (7, 0)

#: name -> (description, CudaInferenceConfig fields: gpu_layers, tensor_split, ctx_size, batch_size, flash_attn)
KAGGLE_PRESETS: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    "kaggle_t4_dual": (
        "Kaggle 'GPU T4 x2': two T4s (15,360 MiB each, compute 7.5, PCIe, no NVLink); every layer offloaded, "
        "the model split evenly, flash attention on",
        {"gpu_layers": 99, "tensor_split": "0.5,0.5", "ctx_size": 4096, "batch_size": 512, "flash_attn": True},
    ),
    "kaggle_t4_single": (
        "One Kaggle T4 (15,360 MiB, compute 7.5): every layer offloaded, flash attention on",
        {"gpu_layers": 99, "tensor_split": "1.0", "ctx_size": 4096, "batch_size": 512, "flash_attn": True},
    ),
    "kaggle_p100": (
        "Kaggle 'GPU P100' (16 GB, compute 6.0): every layer offloaded, flash attention off (no tensor cores)",
        {"gpu_layers": 99, "tensor_split": "1.0", "ctx_size": 4096, "batch_size": 512, "flash_attn": False},
    ),
}


def preset_specs() -> list[PresetSpec]:
    """The Kaggle presets as registry records."""
    return [PresetSpec(name=name, values=dict(values), description=description)
            for name, (description, values) in KAGGLE_PRESETS.items()]


def flash_attention_fits(accelerator: Accelerator) -> bool:
    """Whether llama.cpp's flash attention is worth turning on for every GPU of ``accelerator``."""
    capability = accelerator.min_compute_capability
    return capability is not None and capability >= FLASH_ATTN_MIN_COMPUTE


def choose_preset(accelerator: Accelerator) -> tuple[str, str]:
    """The preset name for ``accelerator`` and why: Kaggle's own, else the llama.cpp plugin's generic ones."""
    names = accelerator.names
    if not names:
        return "cpu", "no GPU: llama.cpp runs on the CPU (the llama.cpp plugin's 'cpu' preset)"
    if all("T4" in name.split() or name.endswith(" T4") for name in names):
        if len(names) >= 2:
            return "kaggle_t4_dual", f"{len(names)} Tesla T4: the model split over two of them"
        return "kaggle_t4_single", "one Tesla T4"
    if len(names) == 1 and "P100" in names[0]:
        return "kaggle_p100", "one Tesla P100"
    return "single_gpu", f"{', '.join(names)}: not a Kaggle GPU we have a preset for; the generic one-GPU preset"
