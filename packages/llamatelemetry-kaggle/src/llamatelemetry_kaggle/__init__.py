"""llamatelemetry's Kaggle plugin, also reachable as ``llamatelemetry.kaggle``.

- ``auto_configure()``: what the notebook has (run type, GPUs, internet, folders), the llama.cpp
  preset and CUDA library path for it, and where telemetry goes (OTLP from Kaggle user secrets,
  else a file in ``/kaggle/working``); ``auto_configure(init=True)`` starts telemetry with it.
- ``detect()``: the Kaggle kernel from its environment variables, or ``None``.
- Presets ``kaggle_t4_dual``, ``kaggle_t4_single``, ``kaggle_p100`` for ``quick_start``/``ServerManager``.

Importing this package reads nothing and changes nothing.
"""

from __future__ import annotations

from llamatelemetry_kaggle.accelerator import Accelerator, GPUInfo, detect_accelerator
from llamatelemetry_kaggle.configure import KaggleConfig, TelemetryPlan, auto_configure, last_config
from llamatelemetry_kaggle.detect import KaggleEnvironment, detect
from llamatelemetry_kaggle.libraries import cuda_library_path
from llamatelemetry_kaggle.presets import KAGGLE_PRESETS, choose_preset

__version__ = "0.1.0"

__all__ = [
    "KAGGLE_PRESETS",
    "Accelerator",
    "GPUInfo",
    "KaggleConfig",
    "KaggleEnvironment",
    "TelemetryPlan",
    "__version__",
    "auto_configure",
    "choose_preset",
    "cuda_library_path",
    "detect",
    "detect_accelerator",
    "last_config",
]
