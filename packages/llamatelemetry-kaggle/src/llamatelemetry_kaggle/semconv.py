"""Resource attribute names the Kaggle plugin sets (no OpenTelemetry standard exists for them)."""

from __future__ import annotations

from typing import Final

#: ``kaggle`` on a Kaggle notebook.
PLATFORM: Final = "llamatelemetry.platform"
#: ``interactive`` (the editor) or ``batch`` (a committed run), from ``KAGGLE_KERNEL_RUN_TYPE``.
KAGGLE_RUN_TYPE: Final = "llamatelemetry.kaggle.run_type"
#: What the notebook runs on: ``T4 x2``, ``T4``, ``P100``, ``none``.
KAGGLE_ACCELERATOR: Final = "llamatelemetry.kaggle.accelerator"
#: How many NVIDIA GPUs the notebook has.
KAGGLE_GPU_COUNT: Final = "llamatelemetry.kaggle.gpu.count"
#: The GPUs' product names, in NVML order.
KAGGLE_GPU_NAMES: Final = "llamatelemetry.kaggle.gpu.names"
#: The GPUs' CUDA compute capabilities (``7.5``), in NVML order; ``unknown`` where neither NVML nor the name table says.
KAGGLE_GPU_COMPUTE_CAPABILITIES: Final = "llamatelemetry.kaggle.gpu.compute_capabilities"
#: The Docker image's build date (``/etc/build_date``): which Kaggle image the kernel runs.
KAGGLE_IMAGE_BUILD_DATE: Final = "llamatelemetry.kaggle.image.build_date"
#: The integrations attached to the kernel (``KAGGLE_KERNEL_INTEGRATIONS``, e.g. ``BIGQUERY``).
KAGGLE_INTEGRATIONS: Final = "llamatelemetry.kaggle.integrations"
#: The kernel's data-proxy project (``KAGGLE_DATA_PROXY_PROJECT``): the one per-kernel identity Kaggle exposes.
KAGGLE_DATA_PROXY_PROJECT: Final = "llamatelemetry.kaggle.data_proxy.project"
