"""What the GPU module reports: devices, full snapshots, and the sampler's light readings."""

from __future__ import annotations

import attrs

__all__ = ["GPUDevice", "GPUProcess", "GPUSnapshot", "GPUReading", "MIB", "compute_capability_text"]

#: Bytes in a mebibyte: NVML and nvidia-smi's "MiB", and the unit of ``vram_mb`` figures.
MIB = 1024 * 1024


def compute_capability_text(capability: tuple[int, int] | None) -> str | None:
    """``(7, 5)`` as ``"7.5"`` (CUDA's spelling); ``None`` stays ``None``."""
    return None if capability is None else f"{capability[0]}.{capability[1]}"


@attrs.frozen
class GPUDevice:
    """One GPU as NVML (or nvidia-smi) lists it.

    ``index`` is NVML's index, the number nvidia-smi shows; it can differ from a CUDA device
    ordinal when ``CUDA_VISIBLE_DEVICES`` is set (see ``visible_device_ids``).
    ``compute_capability`` is CUDA's (major, minor), (7, 5) on a T4, as NVML reports it; ``None``
    where the driver cannot say (and through nvidia-smi, whose older builds lack the field).

    Example::

        >>> list_devices()
        [GPUDevice(index=0, name='Tesla T4', uuid='GPU-5c1e...', memory_total_bytes=16106127360,
                   compute_capability=(7, 5))]
    """

    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    compute_capability: tuple[int, int] | None = None

    @property
    def compute_capability_text(self) -> str | None:
        """The compute capability as CUDA writes it (``"7.5"``), ``None`` where unknown."""
        return compute_capability_text(self.compute_capability)

    @property
    def memory_total_mb(self) -> float:
        """Total memory in MiB."""
        return self.memory_total_bytes / MIB

    @property
    def hw_id(self) -> str:
        """The ``hw.id`` of this GPU's metrics: its UUID (stable across reboots), else ``gpu<index>``."""
        return self.uuid or f"gpu{self.index}"


@attrs.frozen
class GPUProcess:
    """A process holding memory on a GPU. ``used_memory_bytes`` is ``None`` where the driver does not say."""

    pid: int
    used_memory_bytes: int | None = None
    name: str | None = None


@attrs.frozen
class GPUSnapshot:
    """Everything known about one GPU at one moment; take one with ``GPUSnapshot.capture(device_id)``.

    Figures the GPU does not report (power on some boards, the energy counter before Volta,
    clocks through nvidia-smi on some drivers) are ``None``, never 0. ``energy_j`` is NVML's
    total-energy counter (joules since the driver loaded). ``source`` is ``"nvml"``, or
    ``"nvidia-smi"`` where NVML is missing and the binary exists.

    Example::

        snapshot = GPUSnapshot.capture(device_id=0)
        print(snapshot.name, snapshot.memory_used_bytes / snapshot.memory_total_bytes, snapshot.power_w)
    """

    device_id: int
    name: str
    uuid: str
    timestamp: float
    memory_used_bytes: int
    memory_total_bytes: int
    #: Fraction of time the GPU was busy over the driver's last sample period (0..1).
    utilization: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    processes: tuple[GPUProcess, ...] = ()
    source: str = "nvml"
    #: CUDA compute capability (major, minor), as on ``GPUDevice``; ``None`` where the driver cannot say.
    compute_capability: tuple[int, int] | None = None

    @property
    def memory_utilization(self) -> float:
        """Memory used / memory total (``hw.gpu.memory.utilization``)."""
        return self.memory_used_bytes / self.memory_total_bytes if self.memory_total_bytes else 0.0

    @property
    def device(self) -> GPUDevice:
        """The device this snapshot is of."""
        return GPUDevice(self.device_id, self.name, self.uuid, self.memory_total_bytes, self.compute_capability)

    @classmethod
    def capture(cls, device_id: int = 0) -> GPUSnapshot:
        """Read GPU ``device_id`` now (NVML, or nvidia-smi where NVML is missing); ``NoGPUError`` without one."""
        from llamatelemetry.gpu.sources import open_source

        with open_source() as source:
            return source.snapshot(device_id)


@attrs.frozen
class GPUReading:
    """One sample of one GPU, as the sampler keeps it: the figures that change, nothing else.

    ``time`` is ``time.monotonic()`` when the reading was taken. ``energy_j`` is NVML's energy
    counter where the GPU has one; elsewhere the sampler fills it with its running integral of
    ``power_w`` (so it is always a cumulative figure, in joules, once sampled).
    """

    index: int
    time: float
    memory_used_bytes: int
    memory_total_bytes: int
    utilization: float | None = None
    power_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
