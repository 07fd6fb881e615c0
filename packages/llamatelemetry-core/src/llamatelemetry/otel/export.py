"""The export path: a span queue that never blocks the caller and counts what it drops.

``QueueingSpanProcessor`` takes finished spans on the caller's thread (an append to a deque,
nothing else) and exports them in batches on one background thread. When the queue is full it
drops the span and counts it; drops are reported at shutdown and as a metric, never silently.
``PluginSpanExporter`` runs the ``llamatelemetry_export_span`` hooks on that background thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from llamatelemetry.otel.retry import REASON_QUEUE_FULL

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Span

    from llamatelemetry.plugins import PluginManager

__all__ = ["ExportSpan", "ExportStats", "PluginSpanExporter", "QueueingSpanProcessor"]

log = logging.getLogger("llamatelemetry.export")


class ExportSpan:
    """A finished span on its way to the exporter, as ``llamatelemetry_export_span`` hooks see it.

    ``name`` and ``attributes`` (a plain dict) may be changed in place; ``drop()`` keeps the span
    from being exported. ``kind``, ``resource`` and ``status`` are read-only facts of the span.
    """

    __slots__ = ("_dropped", "_span", "attributes", "name")

    def __init__(self, span: ReadableSpan) -> None:
        self._span = span
        self.name: str = span.name
        self.attributes: dict[str, Any] = dict(span.attributes or {})
        self._dropped = False

    @property
    def kind(self) -> Any:
        """The span's ``SpanKind``."""
        return self._span.kind

    @property
    def resource_attributes(self) -> dict[str, Any]:
        """The resource's attributes (a copy)."""
        return dict(self._span.resource.attributes)

    @property
    def status(self) -> Any:
        """The span's ``Status``."""
        return self._span.status

    @property
    def dropped(self) -> bool:
        """Whether a hook dropped the span."""
        return self._dropped

    def drop(self) -> None:
        """Do not export this span."""
        self._dropped = True

    def to_readable(self) -> ReadableSpan:
        """The span as the exporter will receive it."""
        span = self._span
        if self.name == span.name and self.attributes == dict(span.attributes or {}):
            return span
        return ReadableSpan(
            name=self.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=self.attributes, events=span.events, links=span.links, kind=span.kind,
            status=span.status, start_time=span.start_time, end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )


class PluginSpanExporter(SpanExporter):
    """Runs the ``llamatelemetry_export_span`` hooks, then hands the spans to ``exporter``."""

    def __init__(self, exporter: SpanExporter, plugin_manager: PluginManager, stats: ExportStats | None = None) -> None:
        self._exporter = exporter
        self._pm = plugin_manager
        self._stats = stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Apply the hooks and export what is left."""
        if self._pm.has_impls("llamatelemetry_export_span"):
            kept: list[ReadableSpan] = []
            for span in spans:
                view = ExportSpan(span)
                self._pm.export_span(view)
                if view.dropped:
                    if self._stats is not None:
                        self._stats.add(filtered=1)
                else:
                    kept.append(view.to_readable())
            spans = kept
        if not spans:
            return SpanExportResult.SUCCESS
        return self._exporter.export(spans)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self._exporter.shutdown()


@attrs.define
class ExportStats:
    """Counts kept by the export path of one signal (read them any time; they only grow).

    Items are spans for traces and data points for metrics. With retries (OTLP), one item may
    fail several times and still be exported: ``failed`` counts failed attempts, ``dropped`` what
    was given up (queue or buffer full, retries expired), ``undelivered`` what was still buffered
    when ``shutdown()`` ran out of time, or ended after it.
    """

    #: Items handed to the exporter, per attempt (exported + failed).
    attempted: int = 0
    exported: int = 0
    dropped: int = 0
    failed: int = 0
    filtered: int = 0
    undelivered: int = 0
    #: ``dropped`` by reason: ``queue_full``, ``buffer_full``, ``retry_expired``.
    dropped_by_reason: dict[str, int] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False, eq=False)

    def add(
        self, *, attempted: int = 0, exported: int = 0, dropped: int = 0, failed: int = 0, filtered: int = 0,
        undelivered: int = 0,
    ) -> None:
        """Add to the counters atomically."""
        with self._lock:
            self.attempted += attempted
            self.exported += exported
            self.dropped += dropped
            self.failed += failed
            self.filtered += filtered
            self.undelivered += undelivered

    def add_drop_reason(self, reason: str, count: int) -> None:
        """Count ``count`` dropped items under ``reason`` (``dropped`` itself is added separately)."""
        with self._lock:
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + count


class QueueingSpanProcessor(SpanProcessor):
    """Batches finished spans to an exporter on one daemon thread; drops (counted) when full."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 8192,
        max_export_batch_size: int = 512,
        schedule_delay_s: float = 1.0,
        stats: ExportStats | None = None,
        shutdown_timeout_s: float = 30.0,
        report_at_shutdown: bool = True,
        exporter_counts: bool = False,
    ) -> None:
        if max_queue_size < 1 or max_export_batch_size < 1:
            raise ValueError("max_queue_size and max_export_batch_size must be at least 1.")
        if schedule_delay_s <= 0:
            raise ValueError("schedule_delay_s must be a positive number of seconds.")
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._max_batch = min(max_export_batch_size, max_queue_size)
        self._delay = schedule_delay_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._deadline: float | None = None
        self._report = report_at_shutdown
        # True when the exporter (a RetryingSpanExporter) counts delivery itself: a SUCCESS here means "buffered".
        self._exporter_counts = exporter_counts
        self.stats = stats if stats is not None else ExportStats()
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Condition(threading.Lock())
        self._export_lock = threading.Lock()
        self._stopped = False
        self._warned_full = False
        self._export_error_logged = False
        self._thread = threading.Thread(target=self._run, name="llamatelemetry-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a finished, sampled span (the caller's only cost: a length check and an append)."""
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if self._stopped:
            # A span that ends after shutdown (a generation still running then) cannot be delivered; it is
            # not a full queue, which would point the user at a slow exporter.
            self.stats.add(undelivered=1)
            return
        if len(self._queue) >= self._max_queue:
            self.stats.add(dropped=1)
            self.stats.add_drop_reason(REASON_QUEUE_FULL, 1)
            if not self._warned_full:
                self._warned_full = True
                log.warning("llamatelemetry span queue is full (%d spans); spans are being dropped and counted. "
                            "The exporter is too slow or unreachable.", self._max_queue)
            return
        self._queue.append(span)
        if len(self._queue) >= self._max_batch:
            with self._wake:
                self._wake.notify()

    def _run(self) -> None:
        while not self._stopped:
            with self._wake:
                if not self._stopped and len(self._queue) < self._max_batch:
                    self._wake.wait(self._delay)
            self._drain(deadline=None)

    def _drain(self, deadline: float | None) -> bool:
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._export_lock.acquire(timeout=timeout):
            return False  # the export thread is still busy with a batch and the time is up
        try:
            while self._queue:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                batch: list[ReadableSpan] = []
                while self._queue and len(batch) < self._max_batch:
                    batch.append(self._queue.popleft())
                self._export(batch)
        finally:
            self._export_lock.release()
        return True

    def _export(self, batch: list[ReadableSpan]) -> None:
        if not self._exporter_counts:
            self.stats.add(attempted=len(batch))
        try:
            result = self._exporter.export(batch)
        except Exception:
            result = SpanExportResult.FAILURE
            if not self._export_error_logged:
                self._export_error_logged = True
                log.warning("llamatelemetry span exporter raised; spans of this batch are counted as failed",
                            exc_info=True)
        if self._exporter_counts and result is SpanExportResult.SUCCESS:
            return
        if self._exporter_counts:
            self.stats.add(attempted=len(batch))
        if result is SpanExportResult.SUCCESS:
            self.stats.add(exported=len(batch))
        else:
            self.stats.add(failed=len(batch))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now, on the calling thread; False if the timeout ran out."""
        done = self._drain(deadline=time.monotonic() + timeout_millis / 1000)
        try:
            return self._exporter.force_flush(timeout_millis) and done
        except Exception:  # an exporter without a working flush must not break shutdown
            log.debug("exporter force_flush raised", exc_info=True)
            return done

    def set_deadline(self, deadline: float) -> None:
        """The monotonic time by which ``shutdown()`` must return (else ``shutdown_timeout_s`` from its call)."""
        self._deadline = deadline

    def shutdown(self) -> None:
        """Stop the thread, export what is queued until the deadline, shut the exporter down and report drops."""
        if self._stopped:
            return
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self._shutdown_timeout_s
        self._stopped = True
        with self._wake:
            self._wake.notify_all()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not self._drain(deadline=deadline) or self._thread.is_alive():
            # Out of time (an exporter without its own buffer is blocked): what is still queued is undelivered.
            left = len(self._queue)
            self._queue.clear()
            self.stats.add(undelivered=left)
        try:
            self._exporter.shutdown()
        except Exception:
            log.warning("llamatelemetry span exporter raised on shutdown", exc_info=True)
        stats = self.stats
        if self._report and (stats.dropped or stats.failed or stats.undelivered):
            log.warning("llamatelemetry export summary: %d spans exported, %d dropped (queue full), "
                        "%d failed to export, %d undelivered", stats.exported, stats.dropped, stats.failed,
                        stats.undelivered)
