"""OpenTelemetry hardware semantic conventions (``hw.*``) used for GPUs, as constants.

The names, instruments and units are those of the semantic conventions' hardware section
(https://opentelemetry.io/docs/specs/semconv/hardware/gpu/ and ``common``). GPU facts with no
standard name are in ``llamatelemetry.semconv.gpu``.
"""

from __future__ import annotations

from typing import Final

# ---- metric attributes
#: Required on every hw metric: an id unique within the host (we use the GPU's UUID).
HW_ID: Final = "hw.id"
#: Required on the common hw metrics (hw.power, hw.energy): always ``"gpu"`` here.
HW_TYPE: Final = "hw.type"
HW_NAME: Final = "hw.name"
HW_VENDOR: Final = "hw.vendor"
#: ``general`` for compute utilization (``decoder``/``encoder`` are the video engines).
HW_GPU_TASK: Final = "hw.gpu.task"

HW_TYPE_GPU: Final = "gpu"
HW_GPU_TASK_GENERAL: Final = "general"
HW_VENDOR_NVIDIA: Final = "NVIDIA"

# ---- metrics (instrument, unit)
#: Gauge, ``1``: fraction of time the GPU was busy over the driver's last sample period.
HW_GPU_UTILIZATION: Final = "hw.gpu.utilization"
#: UpDownCounter, ``By``: GPU memory in use.
HW_GPU_MEMORY_USAGE: Final = "hw.gpu.memory.usage"
#: UpDownCounter, ``By``: total GPU memory.
HW_GPU_MEMORY_LIMIT: Final = "hw.gpu.memory.limit"
#: Gauge, ``1``: memory used / memory total.
HW_GPU_MEMORY_UTILIZATION: Final = "hw.gpu.memory.utilization"
#: Gauge, ``W``: instantaneous power draw.
HW_POWER: Final = "hw.power"
#: Counter, ``J``: energy consumed (NVML's counter since the driver loaded, or the sampler's integral of power).
HW_ENERGY: Final = "hw.energy"
#: Gauge, ``Cel``: GPU die temperature.
HW_TEMPERATURE: Final = "hw.temperature"
