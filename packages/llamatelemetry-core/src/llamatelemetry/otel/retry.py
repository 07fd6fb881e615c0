"""Riding out collector outages: exporters that buffer, retry with backoff, and count what they lose.

``RetryingSpanExporter`` and ``RetryingMetricExporter`` wrap an OTLP exporter. ``export()`` only
appends to a bounded in-memory buffer (it runs on the span processor's or the metric reader's
thread, never on the application's); one daemon thread per wrapper sends the buffer oldest first
and, when a send fails, retries it with exponential backoff until it succeeds. When the buffer is
full the oldest items are dropped and counted. ``shutdown()`` keeps trying until a deadline and
counts what is still buffered then as undelivered, so exit never waits on a dead collector for
longer than the deadline.

The wrapped OTLP exporter is built with its own retries switched off (``build_otlp_exporter(...,
retry=False)``): one retry policy, here, instead of two nested ones.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import attrs
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from llamatelemetry.errors import ConfigurationError
from llamatelemetry.semconv.llamatelemetry import EXPORT_DROPPED

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricsData
    from opentelemetry.sdk.trace import ReadableSpan

    from llamatelemetry.otel.export import ExportStats

__all__ = [
    "EXPORT_DROPPED",
    "RetryPolicy",
    "RetryingMetricExporter",
    "RetryingSpanExporter",
    "count_metric_points",
]

log = logging.getLogger("llamatelemetry.export")

#: Values of the ``reason`` attribute of ``llamatelemetry.export.dropped`` (the name lives in semconv).
REASON_QUEUE_FULL: Final = "queue_full"
REASON_BUFFER_FULL: Final = "buffer_full"
REASON_RETRY_EXPIRED: Final = "retry_expired"

_T = TypeVar("_T")


@attrs.frozen
class RetryPolicy:
    """How failed exports are retried.

    The first retry waits ``initial_backoff_s``; each next one twice as long (±20 % jitter), at most
    ``max_backoff_s``. A batch that has failed for ``max_elapsed_s`` is dropped (counted), so one
    batch the collector always rejects cannot hold up the others forever. ``timeout_s`` bounds one
    send (``None``: the exporter's own, ``OTEL_EXPORTER_OTLP_TIMEOUT`` or 10 s)::

        llamatelemetry.init(otlp_endpoint=..., export_retry=RetryPolicy(initial_backoff_s=0.2, max_backoff_s=2))
    """

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 5.0
    max_elapsed_s: float = 300.0
    timeout_s: float | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("initial_backoff_s", "max_backoff_s", "max_elapsed_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(
                    f"RetryPolicy({name}={value!r}) is invalid: give a positive number of seconds.")
        if self.max_backoff_s < self.initial_backoff_s:
            raise ConfigurationError(
                f"RetryPolicy(max_backoff_s={self.max_backoff_s!r}) is below initial_backoff_s="
                f"{self.initial_backoff_s!r}: the longest wait must be at least the first.")
        if self.timeout_s is not None and (isinstance(self.timeout_s, bool) or not self.timeout_s > 0):
            raise ConfigurationError(
                f"RetryPolicy(timeout_s={self.timeout_s!r}) is invalid: give a positive number of seconds or None.")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failed sends (``failures`` ≥ 1)."""
        base = float(min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** min(failures - 1, 30)))
        return base * random.uniform(0.8, 1.2)


@attrs.define(eq=False)
class _Batch(Generic[_T]):
    data: _T
    count: int
    first_failure: float | None = None


class _RetryBuffer(Generic[_T]):
    """The bounded buffer and the sending thread shared by both wrappers (``_T``: one export's data)."""

    def __init__(
        self,
        signal: str,
        send: Callable[[_T], bool],
        *,
        capacity: int,
        policy: RetryPolicy,
        stats: ExportStats,
        trim: Callable[[_T, int], _T] | None = None,
        merge: Callable[[_T, _T], _T | None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ConfigurationError(f"export buffer size {capacity} is invalid: give at least 1 item.")
        self.signal = signal
        self._send = send
        self._capacity = capacity
        self._policy = policy
        self.stats = stats
        self._trim = trim
        self._merge = merge
        self._batches: collections.deque[_Batch[_T]] = collections.deque()
        self._buffered = 0  # items in _batches plus the batch in flight
        self._in_flight: _Batch[_T] | None = None
        self._doomed = 0  # items of the batch in flight to drop if its send fails (no longer in _buffered)
        self._failures = 0
        self._next_attempt = 0.0
        self._closing = False
        self._stopped = False
        self._outage_logged = False
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name=f"llamatelemetry-{signal}-export", daemon=True)
        self._thread.start()

    # ---- producer side (the span processor's / metric reader's thread)

    def put(self, data: _T, count: int) -> None:
        """Buffer ``count`` items for sending; drop the oldest (counted) beyond the capacity."""
        if count <= 0:
            return
        with self._cond:
            if self._stopped:
                self.stats.add(undelivered=count)
                return
            self._batches.append(_Batch(data, count))
            self._buffered += count
            self._enforce_capacity()
            self._cond.notify_all()

    def _enforce_capacity(self) -> None:
        # Called with the lock held. The oldest items go first. The batch in flight holds the oldest: its
        # items are marked (_doomed) and dropped only if the send fails. A batch that cannot be trimmed (one
        # metrics collection) goes whole, but the newest is always kept. What a dropped collection costs
        # depends on temporality: under cumulative (the OTLP default) the newest collection still carries
        # every counter's and histogram's running total, so only intermediate points in time are lost; under
        # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta (or lowmemory) counters and histograms hold
        # only the change since the previous collection, so a dropped one's increments are lost for good.
        # Either way its points are counted as dropped (docs/configuration.md, "Shutdown and collector outages").
        while self._buffered > self._capacity:
            excess = self._buffered - self._capacity
            flying = self._in_flight
            if flying is not None and self._doomed < flying.count and (self._trim is not None or self._batches):
                doom = min(excess, flying.count - self._doomed) if self._trim is not None else flying.count
                self._doomed += doom
                self._buffered -= doom
                continue
            if not self._batches:
                break
            oldest = self._batches[0]
            if self._trim is None and len(self._batches) == 1:
                break
            if oldest.count <= excess or self._trim is None:
                self._batches.popleft()
                lost = oldest.count
            else:
                oldest.data = self._trim(oldest.data, excess)
                oldest.count -= excess
                lost = excess
            self._buffered -= lost
            self._record_drop(lost, REASON_BUFFER_FULL)

    def _record_drop(self, count: int, reason: str) -> None:
        self.stats.add(dropped=count)
        self.stats.add_drop_reason(reason, count)
        if reason == REASON_BUFFER_FULL and not self._outage_logged:
            self._outage_logged = True
            log.warning("llamatelemetry export buffer for %s is full (%d items): the collector has been unreachable "
                        "for a while; the oldest items are being dropped and counted.", self.signal, self._capacity)

    # ---- the sending thread

    def _take(self) -> _Batch[_T] | None:
        # Called with the lock held; waits for something to send and for the backoff to pass.
        while True:
            if self._stopped:
                return None
            now = time.monotonic()
            if self._batches and now >= self._next_attempt:
                break
            timeout = None if not self._batches else self._next_attempt - now
            self._cond.wait(timeout)
        batch = self._batches.popleft()
        if self._merge is not None and batch.first_failure is None:
            # After an outage many small batches wait: send them as fewer, larger requests.
            while self._batches and self._batches[0].first_failure is None:
                merged = self._merge(batch.data, self._batches[0].data)
                if merged is None:
                    break
                following = self._batches.popleft()
                batch = _Batch(merged, batch.count + following.count)
        self._in_flight = batch
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
            if batch is None:
                return
            try:
                ok = self._send(batch.data)
            except Exception:  # an exporter that raises must not end the thread
                log.debug("llamatelemetry %s exporter raised", self.signal, exc_info=True)
                ok = False
            with self._cond:
                self._in_flight = None
                doomed, self._doomed = self._doomed, 0
                if self._stopped:  # shutdown already counted this batch as undelivered (or dropped)
                    return
                self.stats.add(attempted=batch.count)
                if ok:
                    self._buffered -= batch.count - doomed
                    self.stats.add(exported=batch.count)
                    if self._failures:
                        log.info("llamatelemetry %s export recovered after %d failed attempts",
                                 self.signal, self._failures)
                    self._failures = 0
                    self._outage_logged = False
                    self._next_attempt = 0.0
                else:
                    self.stats.add(failed=batch.count)
                    self._failures += 1
                    now = time.monotonic()
                    if batch.first_failure is None:
                        batch.first_failure = now
                    if doomed:
                        self._record_drop(doomed, REASON_BUFFER_FULL)
                        if doomed < batch.count and self._trim is not None:
                            batch.data = self._trim(batch.data, doomed)
                        batch.count -= doomed
                    if batch.count and now - batch.first_failure >= self._policy.max_elapsed_s:
                        self._buffered -= batch.count
                        self._record_drop(batch.count, REASON_RETRY_EXPIRED)
                    elif batch.count:
                        self._batches.appendleft(batch)
                        self._enforce_capacity()
                    wait = self._policy.backoff(self._failures)
                    if self._closing:  # keep trying until the shutdown deadline instead of sleeping past it
                        wait = min(wait, self._policy.initial_backoff_s, 0.2)
                    self._next_attempt = now + wait
                self._cond.notify_all()

    # ---- flush and shutdown

    @property
    def buffered(self) -> int:
        """Items waiting to be sent (including a send in progress)."""
        return self._buffered

    def _wait_empty(self, deadline: float, *, until_failure: bool) -> bool:
        with self._cond:
            self._next_attempt = 0.0  # a flush tries now, whatever the backoff said
            self._cond.notify_all()
            failed_before = self.stats.failed
            while self._buffered > 0 and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (until_failure and self.stats.failed > failed_before):
                    return False
                self._cond.wait(remaining)
            return self._buffered == 0

    def flush(self, timeout_s: float) -> bool:
        """Try to send what is buffered now; False if a send fails (the collector is down) or the timeout runs out.

        It does not wait out an outage: the buffer keeps retrying in the background.
        """
        return self._wait_empty(time.monotonic() + timeout_s, until_failure=True)

    def close(self, deadline: float) -> int:
        """Try to send everything until ``deadline`` (monotonic), then stop; returns the items left undelivered."""
        with self._cond:
            self._closing = True
        self._wait_empty(deadline, until_failure=False)
        with self._cond:
            if self._stopped:
                return 0
            self._stopped = True
            if self._doomed:  # the send in flight had been marked for dropping; it cannot succeed now
                self._record_drop(self._doomed, REASON_BUFFER_FULL)
                self._doomed = 0
            left = self._buffered
            self._buffered = 0
            self._batches.clear()
            self._cond.notify_all()
        if left:
            self.stats.add(undelivered=left)
        return left


def _trim_spans(spans: Sequence[ReadableSpan], n: int) -> Sequence[ReadableSpan]:
    return spans[n:]


class RetryingSpanExporter(SpanExporter):
    """Buffers spans and sends them with retries on its own thread (see the module docstring)."""

    def __init__(
        self,
        exporter: SpanExporter,
        stats: ExportStats,
        *,
        buffer_size: int = 8192,
        policy: RetryPolicy | None = None,
        max_batch_size: int = 512,
        shutdown_timeout_s: float = 2.0,
    ) -> None:
        self._exporter = exporter
        self._shutdown_timeout_s = shutdown_timeout_s
        self._deadline: float | None = None

        def merge(a: Sequence[ReadableSpan], b: Sequence[ReadableSpan]) -> Sequence[ReadableSpan] | None:
            return [*a, *b] if len(a) + len(b) <= max_batch_size else None

        self.buffer: _RetryBuffer[Sequence[ReadableSpan]] = _RetryBuffer(
            "traces", lambda spans: exporter.export(spans) is SpanExportResult.SUCCESS,
            capacity=buffer_size, policy=policy or RetryPolicy(), stats=stats, trim=_trim_spans, merge=merge,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Buffer the spans for sending (never blocks on the network)."""
        self.buffer.put(list(spans), len(spans))
        return SpanExportResult.SUCCESS

    def set_deadline(self, deadline: float) -> None:
        """The monotonic time by which ``shutdown()`` must return (else ``shutdown_timeout_s`` from its call)."""
        self._deadline = deadline

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send what is buffered; False if ``timeout_millis`` ran out first."""
        return self.buffer.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Send what is left until the deadline, count the rest as undelivered, and shut the exporter down."""
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self._shutdown_timeout_s
        self.buffer.close(deadline)
        try:
            self._exporter.shutdown()  # also cancels a send still in flight (gRPC)
        except Exception:
            log.debug("span exporter raised on shutdown", exc_info=True)


def count_metric_points(data: MetricsData) -> int:
    """The number of data points in one metrics collection."""
    return sum(len(metric.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics
               for metric in sm.metrics)


class RetryingMetricExporter(MetricExporter):
    """Buffers metrics collections and sends them with retries on its own thread; counts data points."""

    def __init__(
        self,
        exporter: MetricExporter,
        stats: ExportStats,
        *,
        buffer_size: int = 8192,
        policy: RetryPolicy | None = None,
        shutdown_timeout_s: float = 2.0,
    ) -> None:
        # The reader asks the exporter for temporality and aggregation: answer as the wrapped one would.
        super().__init__(preferred_temporality=getattr(exporter, "_preferred_temporality", None),
                         preferred_aggregation=getattr(exporter, "_preferred_aggregation", None))
        self._exporter = exporter
        self._shutdown_timeout_s = shutdown_timeout_s
        self._deadline: float | None = None
        self.buffer: _RetryBuffer[MetricsData] = _RetryBuffer(
            "metrics", lambda data: exporter.export(data) is MetricExportResult.SUCCESS,
            capacity=buffer_size, policy=policy or RetryPolicy(), stats=stats,
        )

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Buffer one collection for sending (never blocks on the network)."""
        self.buffer.put(metrics_data, count_metric_points(metrics_data))
        return MetricExportResult.SUCCESS

    def set_deadline(self, deadline: float) -> None:
        """The monotonic time by which ``shutdown()`` must return (else ``shutdown_timeout_s`` from its call)."""
        self._deadline = deadline

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Send what is buffered; False if ``timeout_millis`` ran out first."""
        return self.buffer.flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Send what is left until the deadline, count the rest as undelivered, and shut the exporter down."""
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self._shutdown_timeout_s
        self.buffer.close(deadline)
        try:
            self._exporter.shutdown()
        except Exception:
            log.debug("metric exporter raised on shutdown", exc_info=True)
