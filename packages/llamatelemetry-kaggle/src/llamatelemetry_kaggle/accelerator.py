"""The notebook's accelerator: its GPUs as the core's GPU module reads them, with their compute capability."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import attrs

__all__ = ["GPUInfo", "Accelerator", "detect_accelerator", "compute_capability_from_name"]

log = logging.getLogger("llamatelemetry.kaggle")

# Compute capability by product name, for where NVML cannot say (nvidia-smi only, an old pynvml):
# the GPUs Kaggle offers and a few common ones. NVML's own answer always wins.
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


def _nvml_capabilities(count: int) -> list[tuple[int, int] | None]:
    """Each GPU's compute capability from NVML, ``None`` where it cannot say (the GPU module does not read it)."""
    try:
        nvml: Any = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception as exc:  # no NVML here: the product-name table answers instead
        log.debug("compute capability: NVML unavailable (%s)", exc)
        return [None] * count
    try:
        read = getattr(nvml, "nvmlDeviceGetCudaComputeCapability", None)
        found: list[tuple[int, int] | None] = []
        for index in range(count):
            try:
                if read is None:
                    found.append(None)
                    continue
                major, minor = read(nvml.nvmlDeviceGetHandleByIndex(index))
                found.append((int(major), int(minor)))
            except Exception as exc:  # one GPU that does not answer leaves the others readable
                log.debug("compute capability of GPU %d: %s", index, exc)
                found.append(None)
        return found
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown: %s", exc)


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
    capabilities = _nvml_capabilities(len(devices))
    gpus = tuple(
        GPUInfo(index=device.index, name=device.name, memory_total_mib=round(device.memory_total_mb),
                power_limit_w=limit, compute_capability=capability or compute_capability_from_name(device.name))
        for device, limit, capability in zip(devices, limits, capabilities, strict=True)
    )
    return Accelerator(gpus=gpus)
