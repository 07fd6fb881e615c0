"""``GPUSampler``: one daemon thread that reads the GPUs every interval and keeps each one's last reading.

Everything that needs GPU figures on a hot path (span enrichment, metric callbacks) reads the
sampler's last values; only the sampler's thread talks to NVML.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import attrs

from llamatelemetry.errors import ValidationError
from llamatelemetry.gpu.records import GPUDevice, GPUReading
from llamatelemetry.gpu.sources import GPUSource, no_such_device, open_source

__all__ = ["GPUSampler", "DEFAULT_INTERVAL_S", "SMI_MIN_INTERVAL_S", "energy_at"]

log = logging.getLogger("llamatelemetry.gpu")

#: Default seconds between samples: the resolution of span peaks and of energy at span edges.
DEFAULT_INTERVAL_S = 0.1
#: nvidia-smi spawns a process per reading: never sample faster than this through it.
SMI_MIN_INTERVAL_S = 1.0


class SampleObserver(Protocol):
    """Something that wants every new set of readings (a span's peak tracker)."""

    def observe(self, latest: dict[int, GPUReading]) -> None:
        """Called on the sampler's thread after each sample; must be quick and must not raise."""


def energy_at(reading: GPUReading, now: float) -> float | None:
    """The energy counter extrapolated from ``reading`` to ``now`` with its power (``None`` without energy)."""
    energy = reading.energy_j
    if energy is None or reading.power_w is None or now <= reading.time:
        return energy
    return energy + reading.power_w * (now - reading.time)


class GPUSampler:
    """Samples GPUs on one daemon thread every ``interval_s`` and keeps each device's last reading.

    ``start()`` takes a first sample at once (so ``latest()`` is never empty afterwards) and
    starts the thread; ``stop()`` ends it and releases NVML. ``sample()`` takes one sample on the
    calling thread. Where a GPU has no energy counter, the sampler integrates power over time
    into ``GPUReading.energy_j``.

    Example::

        sampler = GPUSampler.open(interval_s=0.1).start()
        print(sampler.latest(0).power_w)
        sampler.stop()
    """

    def __init__(self, source: GPUSource, device_ids: Sequence[int] | None = None, *,
                 interval_s: float = DEFAULT_INTERVAL_S, owns_source: bool = True) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not interval_s > 0:
            raise ValidationError("GPUSampler", "interval_s", interval_s, "a number of seconds > 0")
        self._source = source
        self._owns_source = owns_source
        self._devices = {device.index: device for device in source.devices()}
        ids = tuple(self._devices) if device_ids is None else tuple(device_ids)
        if not ids:
            raise ValidationError("GPUSampler", "device_ids", [], "at least one GPU index (None: every GPU)")
        for index in ids:
            if index not in self._devices:
                raise no_such_device(index, len(self._devices))
        self._device_ids = ids
        if source.kind == "nvidia-smi" and interval_s < SMI_MIN_INTERVAL_S:
            log.info("GPU sampling through nvidia-smi: interval raised from %ss to %ss", interval_s, SMI_MIN_INTERVAL_S)
            interval_s = SMI_MIN_INTERVAL_S
        self._interval_s = float(interval_s)
        self._latest: dict[int, GPUReading] = {}
        self._observers: set[SampleObserver] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A plain flag, not Thread.is_alive() (which takes a lock): span edges read it on the hot path.
        self._running = False
        self._lock = threading.Lock()
        self._failures = 0
        self._closed = False

    @classmethod
    def open(cls, device_ids: Sequence[int] | None = None, *, interval_s: float = DEFAULT_INTERVAL_S) -> GPUSampler:
        """A sampler on this machine's GPUs (all of them, or ``device_ids``); ``NoGPUError`` without one."""
        source = open_source()
        try:
            return cls(source, device_ids, interval_s=interval_s)
        except BaseException:
            source.close()
            raise

    # ---------------------------------------------------------------- what it holds

    @property
    def device_ids(self) -> tuple[int, ...]:
        """NVML indices of the sampled GPUs."""
        return self._device_ids

    @property
    def devices(self) -> list[GPUDevice]:
        """The sampled GPUs."""
        return [self._devices[index] for index in self._device_ids]

    def device(self, device_id: int) -> GPUDevice:
        """The sampled GPU ``device_id``."""
        return self._devices[device_id]

    @property
    def interval_s(self) -> float:
        """Seconds between samples."""
        return self._interval_s

    @property
    def source_kind(self) -> str:
        """``"nvml"`` or ``"nvidia-smi"``."""
        return self._source.kind

    @property
    def running(self) -> bool:
        """Whether the sampling thread runs (between ``start()`` and ``stop()``)."""
        return self._running

    def latest(self, device_id: int) -> GPUReading | None:
        """The last reading of GPU ``device_id`` (``None`` before the first sample)."""
        return self._latest.get(device_id)

    # ---------------------------------------------------------------- sampling

    def sample(self) -> None:
        """Read every sampled GPU now, update the last readings and tell the observers."""
        with self._lock:  # the thread and a direct caller must not interleave the power integral
            for reading in self._source.read(self._device_ids):
                previous = self._latest.get(reading.index)
                if reading.energy_j is None and reading.power_w is not None:
                    reading = attrs.evolve(reading, energy_j=_integrate(previous, reading))
                self._latest[reading.index] = reading
        for observer in tuple(self._observers):
            observer.observe(self._latest)

    def add_observer(self, observer: SampleObserver) -> None:
        """Have ``observer.observe(latest)`` called after every sample."""
        self._observers.add(observer)

    def remove_observer(self, observer: SampleObserver) -> None:
        """Stop calling ``observer``; harmless when it is not there."""
        self._observers.discard(observer)

    def start(self) -> GPUSampler:
        """Take a first sample now and start the sampling thread; calling it again does nothing."""
        if self.running:
            return self
        if self._closed:
            raise RuntimeError("This GPUSampler was stopped and released its GPUs; "
                               "open a new one with GPUSampler.open().")
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llamatelemetry-gpu-sampler", daemon=True)
        self._thread.start()
        self._running = True
        return self

    def _run(self) -> None:
        next_at = time.monotonic() + self._interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self._interval_s
            if next_at < time.monotonic():  # fell behind (a slow read, a suspended VM): skip, do not burst
                next_at = time.monotonic() + self._interval_s
            try:
                self.sample()
                self._failures = 0
            except Exception as exc:  # a lost GPU or a failing nvidia-smi must not end sampling
                self._failures += 1
                if self._failures == 1:
                    log.warning("GPU sampling failed (%s: %s); keeping the last readings and retrying "
                                "(further failures are logged at debug level)", type(exc).__name__, exc)
                else:
                    log.debug("GPU sampling failed again: %r", exc)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and release the GPU source (when the sampler opened it); calling it twice is harmless."""
        self._stop.set()
        self._running = False
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._observers.clear()
        if self._owns_source and not self._closed:
            self._closed = True
            self._source.close()

    def __enter__(self) -> GPUSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<GPUSampler {self.source_kind} devices={list(self._device_ids)} every {self._interval_s}s {state}>"


def _integrate(previous: GPUReading | None, reading: GPUReading) -> float:
    """Energy so far for a GPU without an energy counter: the trapezoid rule over its power readings."""
    if previous is None or previous.energy_j is None:
        return 0.0
    if previous.power_w is None or reading.power_w is None or reading.time <= previous.time:
        return previous.energy_j
    return previous.energy_j + (previous.power_w + reading.power_w) / 2.0 * (reading.time - previous.time)
