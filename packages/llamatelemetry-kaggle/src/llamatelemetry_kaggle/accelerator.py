"""The notebook's accelerator: its GPUs as the core's GPU module reads them, compute capability included."""

from __future__ import annotations

import logging

import attrs

__all__ = ["GPUInfo", "Accelerator", "detect_accelerator", "compute_capability_from_name"]

log = logging.getLogger("llamatelemetry.kaggle")

# Compute capability by product name, for where NVML cannot say (nvidia-smi only, an old pynvml, a
# driver that does not answer): the GPUs Kaggle offers and a few common ones. NVML's answer, which
# the core's GPU module reads into GPUDevice.compute_capability, always wins.
_KNOWN_CAPABILITIES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("T4", (7, 5)), ("P100", (6, 0)), ("V100", (7, 0)), ("A100", (8, 0)), ("A10G", (8, 6)), ("L4", (8, 9)),
    ("H100", (9, 0)), ("H200", (9, 0)),
)


def compute_capability_from_name(name: str) -> tuple[int, int] | None:
    """The compute capability of a known GPU product name (``Tesla T4`` -> (7, 5)), else ``None``."""
    words = name.replace("-", " ").upper().split()
    for model, capability in _KNOWN_CAPABILITIES:
        if model in words:
            return capability
    return None


@attrs.frozen
class GPUInfo:
    """One GPU of the notebook."""

    index: int
    name: str
    memory_total_mib: int
    #: The power cap in watts (70 on a T4), ``None`` where the GPU does not report it.
    power_limit_w: float | None = None
    #: CUDA compute capability as (major, minor): (7, 5) on a T4, (6, 0) on a P100.
    compute_capability: tuple[int, int] | None = None

    @property
    def compute_capability_text(self) -> str | None:
        """``"7.5"``-style text, or ``None``."""
        return None if self.compute_capability is None else "{}.{}".format(*self.compute_capability)


@attrs.frozen
class Accelerator:
    """The GPUs the notebook has (none on a CPU notebook).

    Example::

        >>> detect_accelerator().label
        'T4 x2'
    """

    gpus: tuple[GPUInfo, ...] = ()

    @property
    def gpu_count(self) -> int:
        """How many GPUs."""
        return len(self.gpus)

    @property
    def names(self) -> tuple[str, ...]:
        """Product names, in NVML order."""
        return tuple(gpu.name for gpu in self.gpus)

    @property
    def min_compute_capability(self) -> tuple[int, int] | None:
        """The lowest compute capability among the GPUs (what a split model is limited by)."""
        known = [gpu.compute_capability for gpu in self.gpus if gpu.compute_capability is not None]
        return min(known) if known else None

    @property
    def label(self) -> str:
        """Kaggle's way of naming it: ``T4 x2``, ``T4``, ``P100``, or ``none``."""
        if not self.gpus:
            return "none"
        short = self.gpus[0].name.replace("Tesla ", "").replace("NVIDIA ", "").split("-")[0].strip()
        same = len(set(self.names)) == 1
        if not same:
            return " + ".join(gpu.name for gpu in self.gpus)
        return short if self.gpu_count == 1 else f"{short} x{self.gpu_count}"


def detect_accelerator() -> Accelerator:
    """Read the GPUs through ``llamatelemetry.gpu`` (NVML, else nvidia-smi); an empty ``Accelerator`` without one."""
    from llamatelemetry.gpu import NoGPUError, open_source

    try:
        with open_source() as source:
            devices = source.devices()
            limits: list[float | None] = []
            for device in devices:
                try:
                    limits.append(source.snapshot(device.index).power_limit_w)
                except NoGPUError:
                    limits.append(None)
    except NoGPUError as exc:
        log.debug("no GPU: %s", exc)
        return Accelerator()
    gpus = tuple(
        GPUInfo(index=device.index, name=device.name, memory_total_mib=round(device.memory_total_mb),
                power_limit_w=limit,
                compute_capability=device.compute_capability or compute_capability_from_name(device.name))
        for device, limit in zip(devices, limits, strict=True)
    )
    return Accelerator(gpus=gpus)
