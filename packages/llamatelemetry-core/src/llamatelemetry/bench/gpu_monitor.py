"""GPU figures for a benchmark test: peak memory per device and energy, read through ``llamatelemetry.gpu``.

This is the harness's one hook point for GPUs. ``default_gpu_monitor()`` imports
``llamatelemetry.gpu`` lazily and returns ``None`` (no GPU figures, quietly) when the module is
absent, finds no device, or fails. While a test runs, a daemon thread takes a light reading of
every device each ``interval_s`` (never per request or per chunk), keeping the peak memory use and
the energy used: the difference of the energy counter, or the integral of power where a GPU has
no counter.

From ``llamatelemetry.gpu`` it uses ``list_devices()`` (``index``, ``name``) and ``open_source()``
with ``source.read(indices)`` (``GPUReading``: ``memory_used_bytes``, ``energy_j``, ``power_w``),
falling back to ``GPUSnapshot.capture(device_id)``. Anything else can be supplied as a ``GPUMonitor``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from llamatelemetry.bench.records import GPUFigures

__all__ = ["GPUMonitor", "NVMLGPUMonitor", "default_gpu_monitor", "gpu_environment"]

log = logging.getLogger("llamatelemetry.bench")


class GPUMonitor(Protocol):
    """Measures GPUs while a test runs: ``start()`` before its first request, ``stop()`` after its last."""

    def start(self) -> None:
        """Begin sampling."""
        ...

    def stop(self) -> GPUFigures | None:
        """Stop sampling and return the test's figures (``None`` when nothing could be measured)."""
        ...


# llamatelemetry.gpu's GPUReading / GPUSnapshot field names (bytes, joules).
_MEMORY_FIELDS: tuple[tuple[str, float], ...] = (("memory_used_bytes", 1.0),)
_ENERGY_FIELDS: tuple[tuple[str, float], ...] = (("energy_j", 1.0),)


def _read(obj: Any, fields: Sequence[tuple[str, float]]) -> float | None:
    for name, scale in fields:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) * scale
    return None


def _device_index(device: Any, position: int) -> int:
    for name in ("index", "device_id", "id"):
        value = getattr(device, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return position


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


class NVMLGPUMonitor:
    """Samples ``llamatelemetry.gpu`` readings on a daemon thread; see the module docstring."""

    def __init__(self, gpu_module: Any, devices: Sequence[Any], *, interval_s: float = 0.1) -> None:
        self._gpu = gpu_module
        self._devices = [(_device_index(d, i), str(_field(d, "name") or f"GPU {i}")) for i, d in enumerate(devices)]
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._source: Any = None
        self._reset()

    def _reset(self) -> None:
        count = len(self._devices)
        self._peaks: list[float | None] = [None] * count
        self._first_energy: list[float | None] = [None] * count
        self._last_energy: list[float | None] = [None] * count
        # Where a GPU has no energy counter: the integral of power over the samples (trapezoids).
        self._integrated: list[float] = [0.0] * count
        self._last_power: list[tuple[float, float] | None] = [None] * count
        self._samples = 0

    def _readings(self) -> list[Any]:
        indices = [index for index, _ in self._devices]
        if self._source is not None:
            return list(self._source.read(indices))
        return [self._gpu.GPUSnapshot.capture(index) for index in indices]

    def _sample(self) -> None:
        now = time.monotonic()
        try:
            readings = self._readings()
        except Exception:  # one failed read loses one sample, never the benchmark
            log.debug("reading the GPUs failed", exc_info=True)
            return
        with self._lock:
            for slot, reading in enumerate(readings[:len(self._devices)]):
                memory, energy = _read(reading, _MEMORY_FIELDS), _read(reading, _ENERGY_FIELDS)
                if memory is not None:
                    peak = self._peaks[slot]
                    self._peaks[slot] = memory if peak is None else max(peak, memory)
                if energy is not None:
                    if self._first_energy[slot] is None:
                        self._first_energy[slot] = energy
                    self._last_energy[slot] = energy
                power = _read(reading, (("power_w", 1.0), ("power_watts", 1.0)))
                if power is not None:
                    last = self._last_power[slot]
                    if last is not None:
                        self._integrated[slot] += (now - last[0]) * (power + last[1]) / 2
                    self._last_power[slot] = (now, power)
            self._samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def start(self) -> None:
        """Begin sampling (the first sample is taken now, so a short test still has a start value)."""
        self._reset()
        self._stop.clear()
        open_source = getattr(self._gpu, "open_source", None)
        if open_source is not None:
            try:
                self._source = open_source()  # one NVML session for the test, not one per sample
            except Exception:
                log.debug("llamatelemetry.gpu.open_source() failed; capturing snapshots instead", exc_info=True)
                self._source = None
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="llamatelemetry-bench-gpu", daemon=True)
        self._thread.start()

    def stop(self) -> GPUFigures | None:
        """Stop sampling (a last sample is taken now) and return the test's figures."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._sample()
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
            self._source = None
        with self._lock:
            if not self._samples:
                return None
            energies = []
            for slot in range(len(self._devices)):
                first, last = self._first_energy[slot], self._last_energy[slot]
                if first is not None and last is not None:
                    energies.append(last - first)
                elif self._last_power[slot] is not None:
                    energies.append(self._integrated[slot])
            return GPUFigures(
                devices=tuple(name for _, name in self._devices),
                peak_memory_used_bytes=tuple(None if p is None else int(p) for p in self._peaks),
                energy_joules=round(sum(energies), 6) if energies else None, samples=self._samples,
            )


def _gpu_module() -> Any | None:
    try:
        return importlib.import_module("llamatelemetry.gpu")
    except ImportError:
        return None
    except Exception:  # a broken GPU module must not stop a benchmark that needs no GPU
        log.warning("llamatelemetry.gpu failed to import; the benchmark goes on without GPU figures", exc_info=True)
        return None


def _devices(gpu: Any) -> list[Any]:
    list_devices = getattr(gpu, "list_devices", None)
    if list_devices is None or not hasattr(gpu, "GPUSnapshot"):
        return []
    try:
        return list(list_devices())
    except Exception:  # "no GPU" must be quiet (DESIGN §4)
        log.debug("llamatelemetry.gpu.list_devices() failed: no GPU figures", exc_info=True)
        return []


def default_gpu_monitor(*, interval_s: float = 0.1) -> GPUMonitor | None:
    """A monitor over ``llamatelemetry.gpu`` when it is installed and sees a GPU, else ``None``."""
    gpu = _gpu_module()
    if gpu is None:
        return None
    devices = _devices(gpu)
    return NVMLGPUMonitor(gpu, devices, interval_s=interval_s) if devices else None


def gpu_environment() -> dict[str, Any] | None:
    """GPU models, memory and driver for the report's environment fingerprint (``None`` without a GPU)."""
    gpu = _gpu_module()
    if gpu is None:
        return None
    devices = _devices(gpu)
    if not devices:
        return None
    listed = []
    for position, device in enumerate(devices):
        if attrs.has(type(device)):
            raw = attrs.asdict(device)
        elif isinstance(device, dict):
            raw = dict(device)
        else:
            raw = {k: v for k, v in getattr(device, "__dict__", {}).items() if not k.startswith("_")}
        entry = {k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool)) or v is None}
        entry.setdefault("index", _device_index(device, position))
        listed.append(entry)
    driver: Any = None
    cuda: Any = None
    try:
        snapshot = gpu.GPUSnapshot.capture(_device_index(devices[0], 0))
        driver, cuda = _field(snapshot, "driver_version"), _field(snapshot, "cuda_version")
    except Exception:  # the fingerprint goes on without the driver version
        log.debug("could not read the GPU driver version", exc_info=True)
    return {"devices": [str(d.get("name")) for d in listed], "driver_version": driver or _field(devices[0],
            "driver_version"), "cuda_version": cuda, "details": listed}
