"""``FakeNVML``: a FAKE of the ``pynvml`` module, for testing GPU telemetry on machines without an NVIDIA GPU.

It is not a GPU and measures nothing. It answers the NVML calls ``llamatelemetry.gpu`` makes
with scripted readings, one step at a time (``advance()``), and counts every call, so tests can
check the sampling and energy arithmetic and that span enrichment makes no NVML call. Install
it where ``pynvml`` would be imported::

    fake = FakeNVML([FakeDevice("Tesla T4", "GPU-...", 15360 * MIB, readings=[...])])
    monkeypatch.setitem(sys.modules, "pynvml", fake)

Readings hold NVML's raw units (mW, mJ, percent, MHz); a ``None`` figure answers
``NVMLError_NotSupported``, as a GPU without that sensor does. Each fake GPU's compute capability
(``FakeDevice(compute_capability=(7, 5))``) answers ``nvmlDeviceGetCudaComputeCapability``.
``process_list_error`` makes the process-list calls raise, as ``pynvml.NVMLLibraryMismatchError``
(a plain ``Exception``, not an ``NVMLError``) does where the bindings and the driver's library
disagree on those calls. ``clock`` is a manual clock a test can install as the GPU module's
``_monotonic`` to make span edges exact.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import attrs

__all__ = ["FakeNVML", "FakeNVMLError", "FakeNVMLLibraryMismatchError", "FakeDevice", "FakeReading", "FakeClock",
           "FakeProcess"]


@attrs.frozen
class FakeReading:
    """What the fake device reports at one step (NVML units; ``None``: not supported)."""

    memory_used_bytes: int
    utilization_pct: int | None = None
    power_mw: int | None = None
    energy_mj: int | None = None
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None


@attrs.frozen
class FakeProcess:
    """A process the fake device lists."""

    pid: int
    used_memory_bytes: int | None
    name: str


@attrs.define
class FakeDevice:
    """One fake GPU: a fixed identity and a script of readings."""

    name: str
    uuid: str
    memory_total_bytes: int
    readings: Sequence[FakeReading]
    power_limit_mw: int | None = None
    processes: Sequence[FakeProcess] = ()
    step: int = 0
    #: What ``nvmlDeviceGetCudaComputeCapability`` answers, as (major, minor): (7, 5) for a T4; ``None``
    #: answers ``NVMLError_NotSupported`` (a driver that cannot say; callers then fall back or report none).
    compute_capability: tuple[int, int] | None = None

    @property
    def reading(self) -> FakeReading:
        """The reading of the current step (the last one once the script is exhausted)."""
        return self.readings[min(self.step, len(self.readings) - 1)]


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class FakeNVMLError(Exception):
    """The fake's ``pynvml.NVMLError``."""

    def __init__(self, value: int = 999, message: str = "Unknown Error") -> None:
        super().__init__(message)
        self.value = value


class FakeNVMLLibraryMismatchError(Exception):
    """The fake's ``pynvml.NVMLLibraryMismatchError``: like the real one, a plain ``Exception``."""

    def __init__(self, message: str = "Unversioned function called and the pyNVML version does not match the "
                                      "NVML lib version.") -> None:
        super().__init__(message)


def _error_class(name: str, value: int, message: str) -> type[FakeNVMLError]:
    def init(self: FakeNVMLError, *args: Any) -> None:
        FakeNVMLError.__init__(self, value, message)

    return type(name, (FakeNVMLError,), {"__init__": init})


class FakeNVML:
    """A FAKE ``pynvml`` module over scripted ``FakeDevice`` readings; see the module docstring."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVMLError = FakeNVMLError
    NVMLError_NotSupported = _error_class("NVMLError_NotSupported", 3, "Not Supported")
    NVMLError_NoPermission = _error_class("NVMLError_NoPermission", 4, "Insufficient Permissions")
    NVMLError_NotFound = _error_class("NVMLError_NotFound", 6, "Not Found")
    NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", 9, "Driver Not Loaded")
    NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", 12, "NVML Shared Library Not Found")
    NVMLError_FunctionNotFound = _error_class("NVMLError_FunctionNotFound", 13, "Function Not Found")
    NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", 15, "GPU is lost")
    NVMLLibraryMismatchError = FakeNVMLLibraryMismatchError

    def __init__(self, devices: Sequence[FakeDevice], *, driver_version: str = "535.183.01",
                 cuda_driver_version: int = 12020, init_error: type[FakeNVMLError] | None = None) -> None:
        self.devices = list(devices)
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.init_error = init_error
        #: Set to an error class to make every device read raise it (a lost GPU, a library mismatch).
        self.read_error: type[Exception] | None = None
        #: Set to an error class to make the process-list calls raise it (``NVMLLibraryMismatchError``).
        self.process_list_error: type[Exception] | None = None
        self.clock = FakeClock()
        self.calls: collections.Counter[str] = collections.Counter()
        #: Calls per thread id: what the caller's thread asked, apart from a sampler thread.
        self.calls_by_thread: collections.Counter[int] = collections.Counter()
        self.initialized = 0

    # ---------------------------------------------------------------- test controls

    def advance(self, steps: int = 1, *, seconds: float = 0.0) -> None:
        """Move every device ``steps`` readings on (and the clock ``seconds``)."""
        for device in self.devices:
            device.step += steps
        self.clock.advance(seconds)

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        self.calls_by_thread[threading.get_ident()] += 1

    def _figure(self, handle: FakeDevice, value: Any) -> Any:
        if self.read_error is not None:
            raise self.read_error()
        if value is None:
            raise self.NVMLError_NotSupported()
        return value

    # ---------------------------------------------------------------- the pynvml surface

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise self.init_error()
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        self._count("nvmlDeviceGetHandleByIndex")
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str:
        self._count("nvmlDeviceGetName")
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:
        self._count("nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> SimpleNamespace:
        self._count("nvmlDeviceGetMemoryInfo")
        used = self._figure(handle, handle.reading.memory_used_bytes)
        return SimpleNamespace(total=handle.memory_total_bytes, used=used, free=handle.memory_total_bytes - used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice) -> SimpleNamespace:
        self._count("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self._figure(handle, handle.reading.utilization_pct), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: FakeDevice) -> int:
        self._count("nvmlDeviceGetPowerUsage")
        return int(self._figure(handle, handle.reading.power_mw))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeDevice) -> int:
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        return int(self._figure(handle, handle.reading.energy_mj))

    def nvmlDeviceGetTemperature(self, handle: FakeDevice, sensor: int) -> int:
        self._count("nvmlDeviceGetTemperature")
        return int(self._figure(handle, handle.reading.temperature_c))

    def nvmlDeviceGetClockInfo(self, handle: FakeDevice, clock: int) -> int:
        self._count("nvmlDeviceGetClockInfo")
        reading = handle.reading
        return int(self._figure(handle, reading.sm_clock_mhz if clock == self.NVML_CLOCK_SM
                                else reading.memory_clock_mhz))

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeDevice) -> tuple[int, int]:
        self._count("nvmlDeviceGetCudaComputeCapability")
        major, minor = self._figure(handle, handle.compute_capability)
        return int(major), int(minor)

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeDevice) -> int:
        self._count("nvmlDeviceGetPowerManagementLimit")
        return int(self._figure(handle, handle.power_limit_mw))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        self._count("nvmlDeviceGetComputeRunningProcesses")
        if self.process_list_error is not None:
            raise self.process_list_error()
        return [SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory_bytes) for p in handle.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        self._count("nvmlDeviceGetGraphicsRunningProcesses")
        if self.process_list_error is not None:
            raise self.process_list_error()
        return []

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        self._count("nvmlSystemGetProcessName")
        for device in self.devices:
            for process in device.processes:
                if process.pid == pid:
                    return process.name
        raise self.NVMLError_NotFound()

    def nvmlSystemGetDriverVersion(self) -> str:
        self._count("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._count("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    @property
    def device_reads(self) -> int:
        """How many per-device NVML calls were made so far (what span enrichment must never add to)."""
        return sum(n for name, n in self.calls.items() if name.startswith("nvmlDeviceGet"))
