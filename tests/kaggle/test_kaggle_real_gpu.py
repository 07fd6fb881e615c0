"""The Kaggle plugin's GPU facts on a real NVIDIA GPU (skipped elsewhere by the root conftest): NVML, not a fake."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _smi(field: str) -> list[str]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        pytest.skip("nvidia-smi is not on PATH: nothing to compare NVML's answers with")
    result = subprocess.run([binary, f"--query-gpu={field}", "--format=csv,noheader,nounits"], capture_output=True,
                            text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"this nvidia-smi cannot report {field}: {result.stdout.strip()} {result.stderr.strip()}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def test_the_accelerator_matches_nvidia_smi() -> None:
    from llamatelemetry_kaggle.accelerator import detect_accelerator

    accelerator = detect_accelerator()
    assert accelerator.gpus, "the gpu marker promised a GPU"
    names, memory, capability = _smi("name"), _smi("memory.total"), _smi("compute_cap")
    assert list(accelerator.names) == names
    assert [gpu.memory_total_mib for gpu in accelerator.gpus] == [int(float(m)) for m in memory]
    assert [gpu.compute_capability_text for gpu in accelerator.gpus] == capability, "NVML's compute capability"
    assert all(gpu.power_limit_w is None or gpu.power_limit_w > 0 for gpu in accelerator.gpus)


def test_auto_configure_on_a_real_gpu_under_a_fake_kaggle(on_kaggle: None, kaggle_root: Path) -> None:
    from llamatelemetry.kaggle import auto_configure
    from llamatelemetry_kaggle.presets import FLASH_ATTN_MIN_COMPUTE

    cfg = auto_configure(root=kaggle_root, check_internet=False)
    assert cfg.accelerator.gpu_count >= 1 and cfg.preset is not None
    capability = cfg.accelerator.min_compute_capability
    assert capability is not None and cfg.flash_attention is (capability >= FLASH_ATTN_MIN_COMPUTE)
