"""GPU telemetry: devices and snapshots through NVML, a background sampler, and span enrichment.

Nothing here imports ``pynvml`` until a GPU is read. Without an NVIDIA GPU, ``list_devices()``
returns ``[]`` and ``GPUSnapshot.capture()`` raises ``NoGPUError``.

Example::

    from llamatelemetry.gpu import GPUSnapshot, GPUSpanEnricher, list_devices

    devices = list_devices()
    snapshot = GPUSnapshot.capture(device_id=0)

    enricher = GPUSpanEnricher(device_id=0)
    with enricher.enrich(span):
        ...  # the span gets VRAM before/after/delta/peak and the energy used
"""

from __future__ import annotations

from llamatelemetry.gpu.enricher import GPUSpanEnricher
from llamatelemetry.gpu.records import GPUDevice, GPUProcess, GPUReading, GPUSnapshot
from llamatelemetry.gpu.sampler import GPUSampler
from llamatelemetry.gpu.sources import GPUSource, NoGPUError, list_devices, open_source, visible_device_ids

__all__ = [
    "GPUDevice",
    "GPUProcess",
    "GPUReading",
    "GPUSampler",
    "GPUSnapshot",
    "GPUSource",
    "GPUSpanEnricher",
    "NoGPUError",
    "list_devices",
    "open_source",
    "visible_device_ids",
]
