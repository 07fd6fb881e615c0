"""``GPUSpanEnricher``: GPU memory and energy over a span's lifetime, read from the sampler (no NVML per span)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from llamatelemetry.errors import ValidationError
from llamatelemetry.gpu.records import GPUDevice, GPUReading
from llamatelemetry.gpu.sampler import GPUSampler, energy_at
from llamatelemetry.gpu.sources import NoGPUError, list_devices, visible_device_ids
from llamatelemetry.plugins.hookspecs import hookimpl
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import gpu as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span


__all__ = ["GPUSpanEnricher"]

log = logging.getLogger("llamatelemetry.gpu")

# A module-level name so tests can drive the span edges with a recorded clock.
_monotonic = time.monotonic


class _Window:
    """One GPU over one open span: its reading at the start, and the peak the sampler raises meanwhile."""

    __slots__ = ("at_edges", "index", "peak", "sampler", "start", "started_at")

    def __init__(self, sampler: GPUSampler, at_edges: bool, index: int, start: GPUReading, now: float) -> None:
        self.sampler = sampler
        self.at_edges = at_edges
        self.index = index
        self.start = start
        self.started_at = now
        self.peak = start.memory_used_bytes

    def observe(self, latest: dict[int, GPUReading]) -> None:
        """Raise the peak with a new sample (the sampler's thread calls this)."""
        reading = latest.get(self.index)
        if reading is not None and reading.memory_used_bytes > self.peak:
            self.peak = reading.memory_used_bytes

    def energy(self, end: GPUReading, now: float) -> float | None:
        """Joules between the span's edges, each extrapolated from its last sample (never negative)."""
        first, last = energy_at(self.start, self.started_at), energy_at(end, now)
        if first is None or last is None:
            return None
        # Extrapolated edges can cross by a hair on very short spans.
        return last - first if last > first else 0.0


class _SplitWindow:
    """Several GPUs over one open span (a split model): one window each, and the peak of their sum."""

    __slots__ = ("at_edges", "parts", "sampler", "total_peak")

    def __init__(self, sampler: GPUSampler, at_edges: bool, parts: list[_Window]) -> None:
        self.sampler = sampler
        self.at_edges = at_edges
        self.parts = parts
        self.total_peak = sum(part.peak for part in parts)

    def observe(self, latest: dict[int, GPUReading]) -> None:
        """Raise each GPU's peak and the peak of the sum with a new sample."""
        total = 0
        for part in self.parts:
            part.observe(latest)
            reading = latest.get(part.index)
            total += reading.memory_used_bytes if reading is not None else part.peak
        if total > self.total_peak:
            self.total_peak = total


class GPUSpanEnricher:
    """Adds the GPU memory (before, after, delta, peak) and energy of a span's lifetime to the span.

    Figures come from a ``GPUSampler``'s last readings, so enriching a span calls no NVML
    function: the sampler given, else the one ``init(enable_gpu=True)`` started; without either,
    the enricher opens its own and samples at the span's start and end (NVML calls per span,
    fine around a batch, too slow for a hot path). Energy is the devices' energy counter at the
    span's end minus at its start, each extrapolated from the last sample with its power; on a
    generation span (``gen_ai.usage.output_tokens`` set) it is also given per output token.
    With several devices (a model split with ``tensor_split``) the main attributes hold the sums
    and each device gets ``llamatelemetry.gpu.device.<index>.*`` copies. A GPU problem is logged,
    never raised into the code being measured.

    Example::

        enricher = GPUSpanEnricher(device_id=0)
        with tracer.start_as_current_span("generate") as span, enricher.enrich(span):
            output = model.generate(...)
            span.set_attribute("gen_ai.usage.output_tokens", len(output))
    """

    #: Spans opened through the request hooks but never ended are forgotten past this many.
    MAX_OPEN_SPANS = 4096

    def __init__(self, device_id: int | Sequence[int] = 0, *, sampler: GPUSampler | None = None) -> None:
        ids = (device_id,) if isinstance(device_id, int) else tuple(device_id)
        allowed = "a GPU index (int >= 0) or a non-empty sequence of distinct GPU indices"
        if not ids or len(set(ids)) != len(ids) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValidationError("GPUSpanEnricher", "device_id", device_id, allowed)
        self.device_ids: tuple[int, ...] = ids
        self._sampler = sampler
        self._own: GPUSampler | None = None
        self._open: dict[int, _Window | _SplitWindow] = {}
        self._warned = False
        # Attribute names are built once: per span, only values are computed. One GPU gets an int
        # (device_id), not a one-element array: arrays cost the SDK three times as much to validate.
        self._device_names = {i: tuple(names.device_attribute(i, s) for s in names.PER_DEVICE_SUFFIXES)
                              for i in ids} if len(ids) > 1 else {}

    @classmethod
    def for_tensor_split(cls, tensor_split: str | Sequence[float], *, sampler: GPUSampler | None = None,
                         devices: Sequence[GPUDevice] | None = None) -> GPUSpanEnricher:
        """An enricher for the GPUs with a non-zero share of a split model (``CudaInferenceConfig.tensor_split``)."""
        from llamatelemetry.inference.types import parse_tensor_split

        shares = parse_tensor_split(tensor_split)
        known = list(devices) if devices is not None else (sampler.devices if sampler is not None else list_devices())
        visible = visible_device_ids(known)
        # Share i belongs to CUDA device i, which is the i-th GPU CUDA_VISIBLE_DEVICES lets this process see.
        ids = [visible[i] for i, share in enumerate(shares) if share > 0 and i < len(visible)]
        if not ids:
            raise NoGPUError(f"tensor_split {','.join(map(str, shares))} names no GPU this process can see "
                             f"({len(visible)} visible).")
        return cls(ids, sampler=sampler)

    # ---------------------------------------------------------------- sampler

    def _resolve(self) -> tuple[GPUSampler, bool] | None:
        """The sampler to read, and whether it must be sampled at the span's edges (it has no thread)."""
        sampler = self._sampler
        if sampler is not None:
            return sampler, not sampler.running
        from llamatelemetry.gpu.plugin import running_sampler

        running = running_sampler()
        if running is not None and all(i in running.device_ids for i in self.device_ids):
            return running, False
        if self._own is None:
            try:
                self._own = GPUSampler.open(self.device_ids)
            except NoGPUError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("GPUSpanEnricher: no GPU data on spans: %s", exc)
                return None
        return self._own, True

    def close(self) -> None:
        """Release the GPUs if this enricher opened them itself (without a running sampler)."""
        own, self._own = self._own, None
        if own is not None:
            own.stop()

    # ---------------------------------------------------------------- span edges

    def start(self, span: Span) -> _Window | _SplitWindow | None:
        """Take the span's starting figures; ``None`` when the span is not recorded or there is no GPU."""
        if not span.is_recording():
            return None
        sampler = self._sampler
        if sampler is not None and sampler.running:
            at_edges = False
        else:
            resolved = self._resolve()
            if resolved is None:
                return None
            sampler, at_edges = resolved
            if at_edges:
                sampler.sample()
        latest = sampler._latest  # the dict itself: this is the hot path, a method call per GPU adds up
        now = _monotonic()
        window: _Window | _SplitWindow
        if len(self.device_ids) == 1:
            reading = latest.get(self.device_ids[0])
            if reading is None:
                return None
            window = _Window(sampler, at_edges, reading.index, reading, now)
        else:
            parts: list[_Window] = []
            for index in self.device_ids:
                reading = latest.get(index)
                if reading is None:
                    return None
                parts.append(_Window(sampler, at_edges, index, reading, now))
            window = _SplitWindow(sampler, at_edges, parts)
        sampler.add_observer(window)
        return window

    def finish(self, span: Span, window: _Window | _SplitWindow, output_tokens: int | None = None) -> None:
        """Put the span's GPU figures on it (``output_tokens`` gives joules per output token)."""
        sampler = window.sampler
        sampler.remove_observer(window)
        if not span.is_recording():
            return
        if window.at_edges:
            sampler.sample()
        now = _monotonic()
        latest = sampler._latest
        attributes: dict[str, Any]
        if isinstance(window, _Window):
            end = latest.get(window.index)
            if end is None:
                return
            before, after = window.start.memory_used_bytes, end.memory_used_bytes
            attributes = {
                names.GPU_DEVICE_ID: window.index,
                names.GPU_MEMORY_BEFORE: before,
                names.GPU_MEMORY_AFTER: after,
                names.GPU_MEMORY_DELTA: after - before,
                names.GPU_MEMORY_PEAK: window.peak if window.peak > after else after,
            }
            energy = window.energy(end, now)
        else:
            attributes, energy = self._split_figures(window, latest, now)
            if not attributes:
                return
        if energy is not None:
            attributes[names.GPU_ENERGY] = energy
            if output_tokens:
                attributes[names.GPU_ENERGY_PER_OUTPUT_TOKEN] = energy / output_tokens
        span.set_attributes(attributes)

    def _split_figures(self, window: _SplitWindow, latest: dict[int, GPUReading],
                       now: float) -> tuple[dict[str, Any], float | None]:
        """The sums over the GPUs of a split model, and each GPU's own figures."""
        attributes: dict[str, Any] = {names.GPU_DEVICE_IDS: self.device_ids}
        total_before = total_after = 0
        energies: list[float] = []
        for part in window.parts:
            end = latest.get(part.index)
            if end is None:
                return {}, None
            before, after = part.start.memory_used_bytes, end.memory_used_bytes
            total_before += before
            total_after += after
            b_name, a_name, d_name, p_name, e_name = self._device_names[part.index]
            attributes[b_name] = before
            attributes[a_name] = after
            attributes[d_name] = after - before
            attributes[p_name] = part.peak if part.peak > after else after
            energy = part.energy(end, now)
            if energy is not None:
                energies.append(energy)
                attributes[e_name] = energy
        attributes[names.GPU_MEMORY_BEFORE] = total_before
        attributes[names.GPU_MEMORY_AFTER] = total_after
        attributes[names.GPU_MEMORY_DELTA] = total_after - total_before
        attributes[names.GPU_MEMORY_PEAK] = max(window.total_peak, total_after)
        # All or nothing: a sum over some of the GPUs would pass for the model's energy.
        return attributes, sum(energies) if len(energies) == len(window.parts) else None

    @contextlib.contextmanager
    def enrich(self, span: Span) -> Iterator[Span]:
        """Record the GPU figures of the with-block on ``span`` (per output token when the block sets the usage)."""
        window = self._guarded(self.start, span)
        try:
            yield span
        finally:
            if window is not None:
                self._guarded(self.finish, span, window, _output_tokens(span))

    def _guarded(self, action: Any, *args: Any) -> Any:
        try:
            return action(*args)
        except Exception:  # telemetry never breaks the code it measures
            if not self._warned:
                self._warned = True
                log.warning("GPUSpanEnricher failed; the span has no GPU data (further failures are logged at "
                            "debug level)", exc_info=True)
            else:
                log.debug("GPUSpanEnricher failed again", exc_info=True)
            return None

    # ---------------------------------------------------------------- request hooks

    # The hooks declare only what they read: without ``request`` the recorder never builds one for them.
    @hookimpl
    def llamatelemetry_request_start(self, span: Span) -> None:
        """Open the request span's GPU window."""
        window = self.start(span)
        if window is None:
            return
        open_windows = self._open
        if len(open_windows) >= self.MAX_OPEN_SPANS:
            # A client that never ends its spans must not grow this without bound.
            stale = open_windows.pop(next(iter(open_windows)))
            stale.sampler.remove_observer(stale)
        open_windows[id(span)] = window

    @hookimpl
    def llamatelemetry_request_end(self, span: Span) -> None:
        """Put the request's GPU figures on its span (J/token from the span's own output token count)."""
        window = self._open.pop(id(span), None)
        if window is not None:
            self.finish(span, window, _output_tokens(span))

    def __repr__(self) -> str:
        return f"<GPUSpanEnricher devices={list(self.device_ids)}>"


def _output_tokens(span: Span) -> int | None:
    attributes = getattr(span, "attributes", None)
    value = attributes.get(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS) if attributes is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
