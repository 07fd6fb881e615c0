"""Test harness: a real rotel OTLP collector forwarding into an in-process gRPC sink."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import IO, Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

__all__ = [
    "OtlpSink",
    "ReceivedLogRecord",
    "ReceivedMetricPoint",
    "ReceivedSpan",
    "RotelCollector",
    "RotelStartError",
    "decode_any_value",
    "decode_attributes",
    "rotel_binary",
    "running_collector",
]

_LOCALHOST = "127.0.0.1"
# rotel exits within milliseconds on a port clash; a few retries cover the
# window between picking a free port and rotel binding it.
_START_ATTEMPTS = 3


# --------------------------------------------------------------------------- decoding


def decode_any_value(value: common_pb2.AnyValue) -> object:
    """Convert an OTLP AnyValue into the matching plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return bytes(value.bytes_value)
    if which == "array_value":
        return [decode_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    raise ValueError(f"unknown AnyValue field {which!r}")


def decode_attributes(attributes: Any) -> dict[str, object]:
    """Convert a repeated KeyValue field into a dict."""
    return {kv.key: decode_any_value(kv.value) for kv in attributes}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as decoded from an ExportTraceServiceRequest."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    resource: dict[str, object]
    scope: str
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, object]]]
    start_time_unix_nano: int
    end_time_unix_nano: int
    scope_version: str = ""
    trace_state: str = ""
    links: list[tuple[str, str, dict[str, object]]] | None = None


@dataclass(frozen=True)
class ReceivedMetricPoint:
    """One data point of one metric as decoded from an ExportMetricsServiceRequest."""

    name: str
    unit: str
    description: str
    kind: str
    attributes: dict[str, object]
    value: float | int
    sum: float | None
    bucket_counts: list[int] | None
    explicit_bounds: list[float] | None
    resource: dict[str, object]
    scope: str = ""
    time_unix_nano: int = 0
    start_time_unix_nano: int = 0
    # proto AggregationTemporality value; 0 for gauges/summaries which have none.
    temporality: int = 0
    is_monotonic: bool | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ReceivedLogRecord:
    """One log record as decoded from an ExportLogsServiceRequest."""

    body: object
    severity_number: int
    severity_text: str
    attributes: dict[str, object]
    resource: dict[str, object]
    scope: str
    trace_id: str
    span_id: str
    time_unix_nano: int
    event_name: str = ""


def _hex(raw: bytes) -> str:
    """Hex-encode an id, mapping absent (empty or all-zero) ids to ""."""
    return raw.hex() if raw and any(raw) else ""


def _decode_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten a trace export request into ReceivedSpan objects."""
    out: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = decode_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=span.kind,
                        trace_id=_hex(span.trace_id),
                        span_id=_hex(span.span_id),
                        parent_span_id=_hex(span.parent_span_id),
                        attributes=decode_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        status_code=span.status.code,
                        status_message=span.status.message,
                        events=[(e.name, decode_attributes(e.attributes)) for e in span.events],
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        scope_version=scope_spans.scope.version,
                        trace_state=span.trace_state,
                        links=[
                            (_hex(link.trace_id), _hex(link.span_id), decode_attributes(link.attributes))
                            for link in span.links
                        ],
                    )
                )
    return out


def _number_value(point: metrics_pb2.NumberDataPoint) -> float | int:
    """Return a NumberDataPoint's value whichever oneof carries it."""
    return point.as_int if point.WhichOneof("value") == "as_int" else point.as_double


def _decode_metric(
    metric: metrics_pb2.Metric, resource: dict[str, object], scope: str
) -> list[ReceivedMetricPoint]:
    """Flatten one Metric message into one ReceivedMetricPoint per data point."""
    kind = metric.WhichOneof("data") or ""
    common: dict[str, Any] = {
        "name": metric.name,
        "unit": metric.unit,
        "description": metric.description,
        "kind": kind,
        "resource": resource,
        "scope": scope,
    }
    points: list[ReceivedMetricPoint] = []
    if kind in ("gauge", "sum"):
        data = getattr(metric, kind)
        for p in data.data_points:
            points.append(
                ReceivedMetricPoint(
                    attributes=decode_attributes(p.attributes),
                    value=_number_value(p),
                    sum=None,
                    bucket_counts=None,
                    explicit_bounds=None,
                    time_unix_nano=p.time_unix_nano,
                    start_time_unix_nano=p.start_time_unix_nano,
                    temporality=data.aggregation_temporality if kind == "sum" else 0,
                    is_monotonic=data.is_monotonic if kind == "sum" else None,
                    **common,
                )
            )
    elif kind == "histogram":
        for p in metric.histogram.data_points:
            points.append(
                ReceivedMetricPoint(
                    attributes=decode_attributes(p.attributes),
                    value=p.count,
                    sum=p.sum if p.HasField("sum") else None,
                    bucket_counts=list(p.bucket_counts),
                    explicit_bounds=list(p.explicit_bounds),
                    time_unix_nano=p.time_unix_nano,
                    start_time_unix_nano=p.start_time_unix_nano,
                    temporality=metric.histogram.aggregation_temporality,
                    min=p.min if p.HasField("min") else None,
                    max=p.max if p.HasField("max") else None,
                    **common,
                )
            )
    elif kind == "exponential_histogram":
        # Exponential buckets have no explicit bounds; callers needing them can
        # read the raw request from OtlpSink.metric_requests().
        for p in metric.exponential_histogram.data_points:
            points.append(
                ReceivedMetricPoint(
                    attributes=decode_attributes(p.attributes),
                    value=p.count,
                    sum=p.sum if p.HasField("sum") else None,
                    bucket_counts=None,
                    explicit_bounds=None,
                    time_unix_nano=p.time_unix_nano,
                    start_time_unix_nano=p.start_time_unix_nano,
                    temporality=metric.exponential_histogram.aggregation_temporality,
                    min=p.min if p.HasField("min") else None,
                    max=p.max if p.HasField("max") else None,
                    **common,
                )
            )
    elif kind == "summary":
        for p in metric.summary.data_points:
            points.append(
                ReceivedMetricPoint(
                    attributes=decode_attributes(p.attributes),
                    value=p.count,
                    sum=p.sum,
                    bucket_counts=None,
                    explicit_bounds=None,
                    time_unix_nano=p.time_unix_nano,
                    start_time_unix_nano=p.start_time_unix_nano,
                    **common,
                )
            )
    return points


def _decode_metric_points(
    request: metrics_service_pb2.ExportMetricsServiceRequest,
) -> list[ReceivedMetricPoint]:
    """Flatten a metrics export request into ReceivedMetricPoint objects."""
    out: list[ReceivedMetricPoint] = []
    for resource_metrics in request.resource_metrics:
        resource = decode_attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                out.extend(_decode_metric(metric, resource, scope_metrics.scope.name))
    return out


def _decode_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[ReceivedLogRecord]:
    """Flatten a logs export request into ReceivedLogRecord objects."""
    out: list[ReceivedLogRecord] = []
    for resource_logs in request.resource_logs:
        resource = decode_attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                out.append(
                    ReceivedLogRecord(
                        body=decode_any_value(record.body),
                        severity_number=record.severity_number,
                        severity_text=record.severity_text,
                        attributes=decode_attributes(record.attributes),
                        resource=resource,
                        scope=scope_logs.scope.name,
                        trace_id=_hex(record.trace_id),
                        span_id=_hex(record.span_id),
                        time_unix_nano=record.time_unix_nano,
                        event_name=getattr(record, "event_name", ""),
                    )
                )
    return out


def _summarize_spans(spans: list[ReceivedSpan]) -> str:
    """Render received spans compactly for assertion messages."""
    if not spans:
        return "  (no spans received)"
    lines = [f"  {s.name!r} kind={s.kind} span_id={s.span_id} attrs={s.attributes!r}" for s in spans[:50]]
    if len(spans) > 50:
        lines.append(f"  ... and {len(spans) - 50} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- sink


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """Trace service that hands every request to the owning sink."""

    def __init__(self, sink: OtlpSink) -> None:
        """Remember the sink to record into."""
        self._sink = sink

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Record a trace export request."""
        self._sink._record("traces", request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Metrics service that hands every request to the owning sink."""

    def __init__(self, sink: OtlpSink) -> None:
        """Remember the sink to record into."""
        self._sink = sink

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        """Record a metrics export request."""
        self._sink._record("metrics", request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    """Logs service that hands every request to the owning sink."""

    def __init__(self, sink: OtlpSink) -> None:
        """Remember the sink to record into."""
        self._sink = sink

    def Export(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        """Record a logs export request."""
        self._sink._record("logs", request)
        return logs_service_pb2.ExportLogsServiceResponse()


class OtlpSink:
    """In-process OTLP/gRPC server that stores every export request it receives."""

    def __init__(self) -> None:
        """Create a stopped sink; call start() to listen."""
        self._cond = threading.Condition()
        self._requests: dict[str, list[Any]] = {"traces": [], "metrics": [], "logs": []}
        self._server: grpc.Server | None = None
        self._port: int | None = None

    # -- lifecycle

    def start(self) -> None:
        """Bind to a free 127.0.0.1 port and start serving."""
        if self._server is not None:
            return
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-sink"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        # Letting gRPC bind port 0 itself avoids the pick-then-bind race.
        port = server.add_insecure_port(f"{_LOCALHOST}:0")
        if port == 0:
            raise RuntimeError("OtlpSink could not bind a port on 127.0.0.1")
        server.start()
        self._server = server
        self._port = port

    def stop(self) -> None:
        """Stop serving; stored data stays readable."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5)

    def __enter__(self) -> OtlpSink:
        """Start the sink for a with-block."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the sink at the end of a with-block."""
        self.stop()

    @property
    def port(self) -> int:
        """TCP port the sink listens on."""
        if self._port is None:
            raise RuntimeError("OtlpSink is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """OTLP/gRPC endpoint URL of the sink."""
        return f"http://{_LOCALHOST}:{self.port}"

    # -- recording

    def _record(self, signal_name: str, request: Any) -> None:
        """Store a request and wake any waiters."""
        with self._cond:
            self._requests[signal_name].append(request)
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget everything received so far."""
        with self._cond:
            for requests in self._requests.values():
                requests.clear()

    # -- raw and decoded access

    def trace_requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        """Raw trace export requests in arrival order."""
        with self._cond:
            return list(self._requests["traces"])

    def metric_requests(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        """Raw metrics export requests in arrival order."""
        with self._cond:
            return list(self._requests["metrics"])

    def log_requests(self) -> list[logs_service_pb2.ExportLogsServiceRequest]:
        """Raw logs export requests in arrival order."""
        with self._cond:
            return list(self._requests["logs"])

    def spans(self) -> list[ReceivedSpan]:
        """All spans received so far, decoded, in arrival order."""
        return [s for r in self.trace_requests() for s in _decode_spans(r)]

    def metric_points(self) -> list[ReceivedMetricPoint]:
        """All metric data points received so far, decoded, in arrival order."""
        return [p for r in self.metric_requests() for p in _decode_metric_points(r)]

    def log_records(self) -> list[ReceivedLogRecord]:
        """All log records received so far, decoded, in arrival order."""
        return [rec for r in self.log_requests() for rec in _decode_logs(r)]

    # -- waiting

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Block until ready() is true or timeout elapses; re-check on every arrival."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Bounded wait so a predicate depending on outside state is still re-polled.
                self._cond.wait(min(remaining, 0.1))

    def wait_for_spans(
        self,
        predicate: Callable[[ReceivedSpan], bool] | None = None,
        count: int = 1,
        timeout: float = 20.0,
    ) -> list[ReceivedSpan]:
        """Wait until at least count spans match predicate; return the matches."""
        matched: list[ReceivedSpan] = []

        def ready() -> bool:
            nonlocal matched
            # Runs under the Condition's lock; spans() re-takes it, which is fine as it is an RLock.
            matched = [s for s in self.spans() if predicate is None or predicate(s)]
            return len(matched) >= count

        if self._wait(ready, timeout):
            return matched
        received = self.spans()
        raise AssertionError(
            f"timed out after {timeout:.1f}s waiting for {count} matching span(s); "
            f"{len(matched)} matched, {len(received)} received:\n{_summarize_spans(received)}"
        )

    def wait_for_metrics(self, name: str, timeout: float = 20.0) -> list[ReceivedMetricPoint]:
        """Wait until points for the named metric arrive; return all of them."""
        matched: list[ReceivedMetricPoint] = []

        def ready() -> bool:
            nonlocal matched
            matched = [p for p in self.metric_points() if p.name == name]
            return bool(matched)

        if self._wait(ready, timeout):
            return matched
        names = sorted({p.name for p in self.metric_points()})
        raise AssertionError(
            f"timed out after {timeout:.1f}s waiting for metric {name!r}; "
            f"metrics received: {names or '(none)'}"
        )

    def wait_for_logs(
        self,
        predicate: Callable[[ReceivedLogRecord], bool] | None = None,
        count: int = 1,
        timeout: float = 20.0,
    ) -> list[ReceivedLogRecord]:
        """Wait until at least count log records match predicate; return the matches."""
        matched: list[ReceivedLogRecord] = []

        def ready() -> bool:
            nonlocal matched
            matched = [r for r in self.log_records() if predicate is None or predicate(r)]
            return len(matched) >= count

        if self._wait(ready, timeout):
            return matched
        bodies = [r.body for r in self.log_records()][:50]
        raise AssertionError(
            f"timed out after {timeout:.1f}s waiting for {count} matching log record(s); "
            f"{len(matched)} matched; bodies received: {bodies!r}"
        )


# --------------------------------------------------------------------------- collector


class RotelStartError(RuntimeError):
    """rotel-agent exited or never opened its ports."""


def rotel_binary() -> pathlib.Path | None:
    """Path of the rotel-agent binary shipped in the rotel wheel, or None."""
    try:
        spec = importlib.util.find_spec("rotel")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        package_dir = pathlib.Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        package_dir = pathlib.Path(spec.origin).parent
    else:
        return None
    binary = package_dir / "rotel-agent"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _free_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOCALHOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((_LOCALHOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a process, then SIGKILL it if it outlives timeout; always reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class RotelCollector:
    """A foreground rotel-agent process that receives OTLP and forwards it to an OtlpSink."""

    def __init__(
        self,
        sink: OtlpSink,
        workdir: pathlib.Path,
        *,
        extra_env: Mapping[str, str] | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        """Configure (but do not start) a collector that forwards to sink."""
        # stop_timeout: rotel exits on SIGTERM in ~10 ms normally, but takes ~3 s when it still
        # holds data it cannot deliver (sink already stopped), so keep this above 3 s.
        self.sink = sink
        self.workdir = pathlib.Path(workdir)
        self.extra_env: dict[str, str] = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], float], RotelCollector] | None = None
        self._grpc_port: int | None = None
        self._http_port: int | None = None
        # The ports the next start must take (restart_on_same_ports), else fresh ones.
        self._fixed_ports: tuple[int, int] | None = None
        # Pid of the last stopped process, so callers can verify it is really gone.
        self.last_pid: int | None = None
        self._instance = f"rotel-{os.getpid()}-{id(self):x}"

    # -- paths and endpoints

    @property
    def log_path(self) -> pathlib.Path:
        """File receiving rotel's stdout and stderr."""
        return self.workdir / f"{self._instance}.log"

    @property
    def pid_path(self) -> pathlib.Path:
        """Per-instance pid file (rotel only writes it in --daemon mode)."""
        return self.workdir / f"{self._instance}.pid"

    @property
    def pid(self) -> int | None:
        """OS pid of the running agent, or None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def grpc_port(self) -> int:
        """Port of the OTLP/gRPC receiver."""
        if self._grpc_port is None:
            raise RuntimeError("RotelCollector is not started")
        return self._grpc_port

    @property
    def http_port(self) -> int:
        """Port of the OTLP/HTTP receiver."""
        if self._http_port is None:
            raise RuntimeError("RotelCollector is not started")
        return self._http_port

    @property
    def grpc_endpoint(self) -> str:
        """OTLP/gRPC receiver URL."""
        return f"http://{_LOCALHOST}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """OTLP/HTTP receiver base URL (append /v1/traces, /v1/metrics, /v1/logs)."""
        return f"http://{_LOCALHOST}:{self.http_port}"

    def is_running(self) -> bool:
        """True while the agent process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_chars: int = 4000) -> str:
        """Last part of the agent's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-max_chars:] if text else "(log empty)"

    # -- lifecycle

    def _environment(self, grpc_port: int, http_port: int) -> dict[str, str]:
        """Build the agent's environment; ROTEL_* from the caller's env is dropped so it cannot leak in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        env.update(
            {
                "ROTEL_OTLP_GRPC_ENDPOINT": f"{_LOCALHOST}:{grpc_port}",
                "ROTEL_OTLP_HTTP_ENDPOINT": f"{_LOCALHOST}:{http_port}",
                # Only used by --daemon, but keeps instances off the shared /tmp defaults.
                "ROTEL_PID_FILE": str(self.pid_path),
                "ROTEL_LOG_FILE": str(self.log_path),
                "ROTEL_EXPORTER": "otlp",
                "ROTEL_OTLP_EXPORTER_ENDPOINT": self.sink.endpoint,
                # grpc is rotel's default; pinned so the sink keeps matching if that changes.
                "ROTEL_OTLP_EXPORTER_PROTOCOL": "grpc",
                # Default batch timeout is 200ms; shorter keeps test waits tight.
                "ROTEL_BATCH_TIMEOUT": "50ms",
                # Default first retry is after 5s, which would stall a test on any hiccup.
                "ROTEL_OTLP_EXPORTER_RETRY_INITIAL_BACKOFF": "100ms",
                "ROTEL_OTLP_EXPORTER_RETRY_MAX_BACKOFF": "1s",
                "ROTEL_OTLP_EXPORTER_RETRY_MAX_ELAPSED_TIME": "15s",
                # Plain-text log file instead of ANSI escapes.
                "NO_COLOR": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, binary: pathlib.Path) -> None:
        """Start one agent process on fresh ports (or the fixed ones) and wait for both receivers."""
        if self._fixed_ports is not None:
            grpc_port, http_port = self._fixed_ports
        else:
            grpc_port = _free_port()
            http_port = _free_port()
            while http_port == grpc_port:
                http_port = _free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A real file, never a PIPE: nothing reads a pipe during the test and a full one blocks rotel.
        # Truncated per attempt so a retry's error check never sees the previous attempt's output.
        log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            proc = subprocess.Popen(
                [str(binary), "start"],
                env=self._environment(grpc_port, http_port),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        except BaseException:
            log_file.close()
            raise
        self._proc, self._log_file = proc, log_file
        self._grpc_port, self._http_port = grpc_port, http_port
        # Safety net: a forgotten collector is still killed at GC / interpreter exit.
        self._finalizer = weakref.finalize(self, _terminate, proc, self.stop_timeout)

        deadline = time.monotonic() + self.startup_timeout
        while True:
            if proc.poll() is not None:
                raise RotelStartError(
                    f"rotel-agent exited with code {proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if _port_open(grpc_port) and _port_open(http_port):
                return
            if time.monotonic() > deadline:
                raise RotelStartError(
                    f"rotel-agent did not open ports {grpc_port}/{http_port} within "
                    f"{self.startup_timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def start(self) -> None:
        """Start the agent and block until its gRPC and HTTP receivers accept connections."""
        if self.is_running():
            return
        binary = rotel_binary()
        if binary is None:
            raise RotelStartError("rotel is not installed (pip install rotel)")
        self.sink.start()
        for attempt in range(_START_ATTEMPTS):
            try:
                self._spawn(binary)
                return
            except RotelStartError as exc:
                self.stop()
                # Only a lost port race is worth retrying; anything else is a real failure.
                if "Address already in use" not in str(exc) or attempt == _START_ATTEMPTS - 1:
                    raise
            except BaseException:
                self.stop()
                raise

    def restart_on_same_ports(self) -> None:
        """Start the stopped agent again on the ports of its last run: an exporter keeps its endpoint."""
        self._fixed_ports = (self.grpc_port, self.http_port)
        try:
            self.start()
        finally:
            self._fixed_ports = None

    def stop(self) -> None:
        """Terminate the agent (SIGKILL after stop_timeout) and reap it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, self.stop_timeout)
            self.last_pid = proc.pid
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> RotelCollector:
        """Start the collector for a with-block."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the collector at the end of a with-block."""
        self.stop()


@contextlib.contextmanager
def running_collector(
    workdir: pathlib.Path, *, extra_env: Mapping[str, str] | None = None
) -> Iterator[tuple[RotelCollector, OtlpSink]]:
    """Run a sink plus a rotel collector forwarding into it for the with-block."""
    sink = OtlpSink()
    sink.start()
    try:
        collector = RotelCollector(sink, pathlib.Path(workdir), extra_env=extra_env)
        with collector:
            yield collector, sink
    finally:
        sink.stop()
