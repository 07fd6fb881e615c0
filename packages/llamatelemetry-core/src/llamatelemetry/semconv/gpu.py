"""GPU and cluster names under ``llamatelemetry.*``: facts with no standard ``hw.*`` name.

Span attributes are put on generation spans by ``GPUSpanEnricher`` (figures summed over the
devices the model runs on; per-device copies when it spans several, see ``device_attribute``).
Memory is in bytes and energy in joules; "peak" is the highest reading the GPU sampler took
during the span, so its resolution is the sampling interval.
"""

from __future__ import annotations

from typing import Final

# ---- span attributes (generation spans)
#: int: NVML index of the GPU the figures cover (the ``llamatelemetry.gpu.index`` of the hw metrics).
GPU_DEVICE_ID: Final = "llamatelemetry.gpu.device_id"
#: int[]: instead of ``device_id`` when the figures cover several GPUs (a split model).
GPU_DEVICE_IDS: Final = "llamatelemetry.gpu.device_ids"
#: int, By: GPU memory in use when the span started (sampler's last reading).
GPU_MEMORY_BEFORE: Final = "llamatelemetry.gpu.memory.before"
#: int, By: GPU memory in use when the span ended.
GPU_MEMORY_AFTER: Final = "llamatelemetry.gpu.memory.after"
#: int, By: after - before (negative when memory was freed).
GPU_MEMORY_DELTA: Final = "llamatelemetry.gpu.memory.delta"
#: int, By: the highest memory in use seen during the span (start and end included).
GPU_MEMORY_PEAK: Final = "llamatelemetry.gpu.memory.peak"
#: double, J: energy the GPUs used during the span (the whole device, not only this request).
GPU_ENERGY: Final = "llamatelemetry.gpu.energy"
#: double, J/{token}: ``llamatelemetry.gpu.energy`` / ``gen_ai.usage.output_tokens``.
GPU_ENERGY_PER_OUTPUT_TOKEN: Final = "llamatelemetry.gpu.energy_per_output_token"

#: Prefix of the per-device copies: ``llamatelemetry.gpu.device.<index>.<memory.before|...|energy>``.
GPU_DEVICE_PREFIX: Final = "llamatelemetry.gpu.device."
#: The span attributes that get a per-device copy when a model spans several GPUs.
PER_DEVICE_SUFFIXES: Final = ("memory.before", "memory.after", "memory.delta", "memory.peak", "energy")

# ---- metric attributes
#: int: the GPU's NVML index (as nvidia-smi numbers it), beside the required ``hw.id`` (its UUID).
GPU_INDEX: Final = "llamatelemetry.gpu.index"

# ---- metrics
#: Gauge, Hz: streaming-multiprocessor clock.
GPU_CLOCK_SM: Final = "llamatelemetry.gpu.clock.sm"
#: Gauge, Hz: memory clock.
GPU_CLOCK_MEMORY: Final = "llamatelemetry.gpu.clock.memory"

# ---- resource attributes (torch.distributed jobs; set only when RANK or WORLD_SIZE is in the environment)
DISTRIBUTED_RANK: Final = "llamatelemetry.distributed.rank"
DISTRIBUTED_WORLD_SIZE: Final = "llamatelemetry.distributed.world_size"
DISTRIBUTED_LOCAL_RANK: Final = "llamatelemetry.distributed.local_rank"
DISTRIBUTED_MASTER_ADDR: Final = "llamatelemetry.distributed.master_addr"
#: Standard resource attribute, set with the ones above and whenever GPU telemetry is on.
HOST_NAME: Final = "host.name"


def device_attribute(device_id: int, suffix: str) -> str:
    """The per-device name of a span attribute, e.g. ``llamatelemetry.gpu.device.1.energy``."""
    return f"{GPU_DEVICE_PREFIX}{device_id}.{suffix}"
