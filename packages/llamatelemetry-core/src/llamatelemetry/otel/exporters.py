"""Exporters: OTLP over gRPC or HTTP, a JSON-lines file, and a compact console."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal

from llamatelemetry.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["build_otlp_exporter", "build_span_exporter", "build_metric_exporter", "JsonLinesFile"]

Signal = Literal["traces", "metrics"]


def build_otlp_exporter(
    endpoint: str | None = None,
    *,
    protocol: str = "grpc",
    signal: Signal = "traces",
    headers: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    retry: bool = True,
) -> Any:
    """Create an OTLP span or metric exporter for ``protocol`` ``"grpc"`` or ``"http/protobuf"``.

    ``endpoint`` is used as given (for HTTP it is the full ``.../v1/traces`` URL); ``None`` lets
    the exporter read the ``OTEL_EXPORTER_OTLP_*`` variables itself. Timeout, compression and
    certificates not given here come from those variables too. ``retry=False`` makes one attempt
    per export (for a wrapper that owns the retry policy, such as ``RetryingSpanExporter``).
    """
    from llamatelemetry.config import check_endpoint, check_headers

    if signal not in ("traces", "metrics"):
        raise ConfigurationError(f"signal={signal!r} is not supported: use 'traces' or 'metrics'.")
    if protocol not in ("grpc", "http/protobuf"):
        raise ConfigurationError(f"protocol={protocol!r} is not an OTLP protocol: use 'grpc' or 'http/protobuf'.")
    # The same checks as init(), so a typo fails here instead of in the exporter's thread at the first send.
    kwargs: dict[str, Any] = {}
    if endpoint is not None:
        endpoint = check_endpoint(endpoint, "build_otlp_exporter(endpoint=...)")
        if protocol == "http/protobuf" and "://" not in endpoint:
            raise ConfigurationError(
                f"build_otlp_exporter(endpoint=...)={endpoint!r} has no scheme: OTLP/HTTP needs the full URL, "
                f"such as http://{endpoint}.")
        kwargs["endpoint"] = endpoint
    if headers:
        kwargs["headers"] = check_headers(headers, "build_otlp_exporter(headers=...)")
    if timeout_s is not None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
            raise ConfigurationError(
                f"build_otlp_exporter(timeout_s={timeout_s!r}) is invalid: give a positive number of seconds or None.")
        kwargs["timeout"] = timeout_s
    if protocol == "grpc":
        if endpoint is not None and endpoint.startswith("http://"):
            kwargs["insecure"] = True
        if not retry:
            import grpc

            # The exporter retries the codes in this set; OK is never an error code, so it never retries.
            kwargs["retryable_error_codes"] = (grpc.StatusCode.OK,)
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpan

            return GrpcSpan(**kwargs)
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetric

        return GrpcMetric(**kwargs)
    exporter: Any
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpan

        exporter = HttpSpan(**kwargs)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetric

        exporter = HttpMetric(**kwargs)
    if not retry:
        _single_attempt_http(exporter)
    return exporter


def _single_attempt_http(exporter: Any) -> None:
    # The HTTP exporters have no public switch for their retries; they retry only while the next
    # backoff fits in the timeout, so an infinite backoff makes one attempt. Without that private
    # hook (another SDK version) the exporter's retries stay, still bounded by its timeout.
    client = getattr(exporter, "_client", None)
    if client is not None and hasattr(client, "_compute_backoff"):
        client._compute_backoff = lambda retry: math.inf


class JsonLinesFile:
    """One file shared by the span and metric exporters; one JSON object a line, written atomically."""

    _open: ClassVar[dict[str, JsonLinesFile]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._handle: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by release()
        self._lock = threading.Lock()
        self._users = 0

    @classmethod
    def acquire(cls, path: str) -> JsonLinesFile:
        """The shared writer for ``path`` (opened on first use)."""
        key = os.path.abspath(path)
        with cls._registry_lock:
            writer = cls._open.get(key)
            if writer is None or writer._handle is None:
                writer = cls._open[key] = cls(path)
            writer._users += 1
            return writer

    def release(self) -> None:
        """Close the file when its last user lets go."""
        with self._registry_lock:
            self._users -= 1
            if self._users <= 0 and self._handle is not None:
                self._handle.close()
                self._handle = None
                self._open.pop(os.path.abspath(self.path), None)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as a JSON line and flush it."""
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            if self._handle is not None:
                self._handle.write(line)
                self._handle.flush()


def _span_record(span: ReadableSpan) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(span.to_json(indent=None))
    record["signal"] = "span"
    return record


def _file_span_exporter(path: str) -> SpanExporter:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        """Writes each span as one JSON line (the SDK's span JSON, plus ``"signal": "span"``)."""

        def __init__(self) -> None:
            self._file = JsonLinesFile.acquire(path)
            self._closed = False

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for span in spans:
                self._file.write(_span_record(span))
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            if not self._closed:
                self._closed = True
                self._file.release()

    return JsonLinesSpanExporter()


def _file_metric_exporter(path: str) -> MetricExporter:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class JsonLinesMetricExporter(MetricExporter):
        """Writes each metrics collection as one JSON line (``"signal": "metrics"``)."""

        def __init__(self) -> None:
            super().__init__()
            self._file = JsonLinesFile.acquire(path)
            self._closed = False

        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            record = json.loads(metrics_data.to_json(indent=None))
            record["signal"] = "metrics"
            self._file.write(record)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            if not self._closed:
                self._closed = True
                self._file.release()

    return JsonLinesMetricExporter()


def _one_line_span(span: ReadableSpan) -> str:
    duration_ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    attributes = json.dumps(dict(span.attributes or {}), default=str, separators=(",", ":"))
    status = span.status.status_code.name
    return f"[llamatelemetry] span {span.name!r} {duration_ms:.2f} ms {status} {attributes}\n"


def build_span_exporter(kind: str, *, endpoint: str | None = None, protocol: str = "grpc",
                        headers: Mapping[str, str] | None = None, output_file: str | None = None,
                        stream: IO[str] | None = None, timeout_s: float | None = None,
                        retry: bool = True) -> SpanExporter | None:
    """The span exporter for ``kind`` ``otlp``, ``file``, ``console`` or ``none`` (returns None)."""
    if kind == "none":
        return None
    if kind == "otlp":
        return build_otlp_exporter(endpoint, protocol=protocol, signal="traces", headers=headers,  # type: ignore[no-any-return]
                                   timeout_s=timeout_s, retry=retry)
    if kind == "file":
        if not output_file:
            raise ConfigurationError("the file exporter needs init(output_file=...).")
        return _file_span_exporter(output_file)
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=stream or sys.stderr, formatter=_one_line_span)
    raise ConfigurationError(f"span exporter {kind!r} is not supported: use otlp, file, console or none.")


def build_metric_exporter(kind: str, *, endpoint: str | None = None, protocol: str = "grpc",
                          headers: Mapping[str, str] | None = None, output_file: str | None = None,
                          stream: IO[str] | None = None, timeout_s: float | None = None,
                          retry: bool = True) -> MetricExporter | None:
    """The metric exporter for ``kind`` ``otlp``, ``file``, ``console`` or ``none`` (returns None)."""
    if kind == "none":
        return None
    if kind == "otlp":
        return build_otlp_exporter(endpoint, protocol=protocol, signal="metrics", headers=headers,  # type: ignore[no-any-return]
                                   timeout_s=timeout_s, retry=retry)
    if kind == "file":
        if not output_file:
            raise ConfigurationError("the file exporter needs init(output_file=...).")
        return _file_metric_exporter(output_file)
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter(
            out=stream or sys.stderr,
            formatter=lambda data: "[llamatelemetry] metrics " + data.to_json(indent=None) + "\n",
        )
    raise ConfigurationError(f"metric exporter {kind!r} is not supported: use otlp, file, console or none.")
