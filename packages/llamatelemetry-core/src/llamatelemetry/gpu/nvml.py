"""GPU figures through NVML (``pynvml``, from the ``nvidia-ml-py`` distribution), imported only here."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from llamatelemetry.gpu.records import GPUDevice, GPUProcess, GPUReading, GPUSnapshot
from llamatelemetry.gpu.sources import GPUSource, NoGPUError, no_such_device

__all__ = ["NVMLSource", "NVMLMissingError"]

log = logging.getLogger("llamatelemetry.gpu")

# A module-level name so tests can give readings a recorded clock.
_monotonic = time.monotonic

# Errors that will not go away on the next call: stop asking for that figure on that device.
# NVMLLibraryMismatchError (bindings newer or older than the driver's library, raised by the process-list
# calls on some drivers) is a plain Exception, not an NVMLError, so it is named in both tuples.
_PERMANENT_ERRORS = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission",
                     "NVMLLibraryMismatchError")
_OTHER_NVML_ERRORS = ("NVMLLibraryMismatchError",)


class NVMLMissingError(Exception):
    """NVML cannot be loaded on this machine (the module or the driver's library is missing)."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _cuda_version(value: int) -> str:
    # NVML encodes CUDA 12.2 as 12020.
    return f"{value // 1000}.{value % 1000 // 10}"


class NVMLSource(GPUSource):
    """The GPUs as NVML reports them. Open with ``NVMLSource.open()``; it holds one ``nvmlInit``."""

    kind = "nvml"

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self._permanent = tuple(getattr(nvml, name) for name in _PERMANENT_ERRORS if hasattr(nvml, name))
        #: What an NVML call may raise: NVMLError and the bindings' errors outside that hierarchy.
        self._errors: tuple[type[BaseException], ...] = (nvml.NVMLError, *(
            getattr(nvml, name) for name in _OTHER_NVML_ERRORS if hasattr(nvml, name)))
        self._unsupported: set[tuple[int, str]] = set()
        self._capabilities: dict[int, tuple[int, int] | None] = {}
        self._closed = False

    @classmethod
    def open(cls) -> NVMLSource:
        """Start NVML; ``NVMLMissingError`` when it is not installed here, ``NoGPUError`` when it lists no GPU."""
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as exc:
            raise NVMLMissingError("the pynvml module is not installed (pip install nvidia-ml-py)") from exc
        try:
            nvml.nvmlInit()
        except nvml.NVMLError_LibraryNotFound:
            raise NVMLMissingError("the NVML library (libnvidia-ml.so.1, installed with the NVIDIA driver) "
                                   "is not found") from None
        except nvml.NVMLError as exc:
            raise NoGPUError(f"NVML did not start ({exc}): check that the NVIDIA driver is loaded "
                             "(nvidia-smi should list the GPUs).") from None
        try:
            source = cls(nvml)
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise NoGPUError(f"NVML could not list the GPUs: {exc}.") from None
        if not source._handles:
            source.close()
            raise NoGPUError("NVML is installed but lists no GPU.")
        return source

    def _handle(self, index: int) -> Any:
        if not 0 <= index < len(self._handles):
            raise no_such_device(index, len(self._handles))
        return self._handles[index]

    def _optional(self, index: int, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, or ``None`` where the GPU does not report that figure."""
        key = (index, what)
        if key in self._unsupported:
            return None
        try:
            return call(*args)
        except self._errors as exc:
            if isinstance(exc, self._permanent):
                self._unsupported.add(key)
                log.debug("GPU %d does not report %s (%s); not asking again", index, what, exc)
            else:
                log.debug("GPU %d: reading %s failed: %s", index, what, exc)
            return None

    def devices(self) -> list[GPUDevice]:
        """Every GPU, in NVML order."""
        nvml = self._nvml
        return [GPUDevice(index=i, name=_text(nvml.nvmlDeviceGetName(h)), uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                          memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                          compute_capability=self._compute_capability(i, h))
                for i, h in enumerate(self._handles)]

    def _compute_capability(self, index: int, handle: Any) -> tuple[int, int] | None:
        """CUDA's (major, minor) for GPU ``index``; ``None`` where the driver (or old bindings) cannot say."""
        if index in self._capabilities:  # a fixed fact of the GPU: asked once per source
            return self._capabilities[index]
        read = getattr(self._nvml, "nvmlDeviceGetCudaComputeCapability", None)
        capability: tuple[int, int] | None = None
        if read is not None:  # else bindings older than the call
            found = self._optional(index, "compute_capability", read, handle)
            try:
                major, minor = found
                capability = (int(major), int(minor))
            except (TypeError, ValueError):  # None (not reported) or an answer of another shape
                capability = None
        self._capabilities[index] = capability
        return capability

    def read(self, indices: Sequence[int]) -> list[GPUReading]:
        """A light reading of each GPU in ``indices``."""
        return [self._read(index) for index in indices]

    def _read(self, index: int) -> GPUReading:
        nvml, handle, optional = self._nvml, self._handle(index), self._optional
        # The energy counter first and the timestamp right after it: span energy is extrapolated from them.
        energy_mj = optional(index, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        now = _monotonic()
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        power_mw = optional(index, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        rates = optional(index, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = optional(index, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        sm_clock = optional(index, "sm_clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        memory_clock = optional(index, "memory_clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM)
        return GPUReading(
            index=index, time=now, memory_used_bytes=int(memory.used), memory_total_bytes=int(memory.total),
            utilization=rates.gpu / 100.0 if rates is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            energy_j=energy_mj / 1000.0 if energy_mj is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            sm_clock_mhz=int(sm_clock) if sm_clock is not None else None,
            memory_clock_mhz=int(memory_clock) if memory_clock is not None else None,
        )

    def snapshot(self, index: int) -> GPUSnapshot:
        """Everything NVML reports about GPU ``index`` now."""
        nvml, handle, optional = self._nvml, self._handle(index), self._optional
        reading = self._read(index)
        power_limit_mw = optional(index, "power_limit", nvml.nvmlDeviceGetPowerManagementLimit, handle)
        cuda = optional(index, "cuda_version", nvml.nvmlSystemGetCudaDriverVersion)
        driver = optional(index, "driver_version", nvml.nvmlSystemGetDriverVersion)
        return GPUSnapshot(
            device_id=index, name=_text(nvml.nvmlDeviceGetName(handle)), uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            timestamp=time.time(), memory_used_bytes=reading.memory_used_bytes,
            memory_total_bytes=reading.memory_total_bytes, utilization=reading.utilization, power_w=reading.power_w,
            power_limit_w=power_limit_mw / 1000.0 if power_limit_mw is not None else None,
            energy_j=reading.energy_j, temperature_c=reading.temperature_c, sm_clock_mhz=reading.sm_clock_mhz,
            memory_clock_mhz=reading.memory_clock_mhz, driver_version=_text(driver) if driver is not None else None,
            cuda_version=_cuda_version(int(cuda)) if cuda is not None else None,
            processes=self._processes(index, handle), source=self.kind,
            compute_capability=self._compute_capability(index, handle),
        )

    def _processes(self, index: int, handle: Any) -> tuple[GPUProcess, ...]:
        nvml = self._nvml
        found: dict[int, GPUProcess] = {}
        for what, call in (("compute_processes", nvml.nvmlDeviceGetComputeRunningProcesses),
                           ("graphics_processes", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
            for info in self._optional(index, what, call, handle) or ():
                pid = int(info.pid)
                if pid in found:
                    continue
                used = getattr(info, "usedGpuMemory", None)
                try:
                    name: str | None = _text(nvml.nvmlSystemGetProcessName(pid))
                except nvml.NVMLError:  # another user's process, or it just exited
                    name = None
                found[pid] = GPUProcess(pid=pid, used_memory_bytes=int(used) if used is not None else None,
                                        name=name or None)
        return tuple(found.values())

    def close(self) -> None:
        """Shut NVML down (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:  # shutting down must not fail the caller
            log.debug("nvmlShutdown failed: %s", exc)
