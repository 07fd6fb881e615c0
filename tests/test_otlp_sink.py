"""Tests of the otlp_sink harness against a real rotel collector."""

from __future__ import annotations

import os
import pathlib
import socket
import time
from collections.abc import Iterator

import pytest

# Skip (rather than error at import) where the OTLP stack is absent; rotel itself is checked per test.
pytest.importorskip("grpc")
pytest.importorskip("opentelemetry.proto")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

import grpc
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes
from otlp_sink import (
    OtlpSink,
    RotelCollector,
    RotelStartError,
    decode_any_value,
    rotel_binary,
    running_collector,
)

SERVICE = "otlp-sink-selftest"


@pytest.fixture
def rotel(tmp_path: pathlib.Path) -> Iterator[tuple[RotelCollector, OtlpSink]]:
    """A started collector and its sink, torn down after the test."""
    _require_rotel()
    with running_collector(tmp_path) as pair:
        yield pair


def _require_rotel() -> None:
    """Skip the calling test when the rotel wheel is not installed."""
    if rotel_binary() is None:
        pytest.skip("rotel not installed (pip install rotel)")


def _tracer_provider(exporter: SpanExporter) -> TracerProvider:
    """TracerProvider exporting synchronously through exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE, "deployment.environment": "test"}))
    # Simple (not batch) processor so the export has happened when the span ends.
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _emit_parent_and_child(provider: TracerProvider) -> None:
    """Emit a parent span and a SERVER child span carrying typed attributes, an event and an error status."""
    tracer = provider.get_tracer("selftest.scope", "1.2.3")
    attributes: Attributes = {
        "str": "hello",
        "int": 42,
        "float": 3.25,
        "bool": True,
        "strs": ["a", "b"],
        "ints": [1, 2, 3],
    }
    with (
        tracer.start_as_current_span("parent"),
        tracer.start_as_current_span("child", kind=SpanKind.SERVER, attributes=attributes) as span,
    ):
        span.add_event("cache.miss", {"key": "k1", "size": 7})
        span.set_status(Status(StatusCode.ERROR, "boom"))


def _assert_parent_and_child(sink: OtlpSink) -> None:
    """Check the spans from _emit_parent_and_child arrived with every field decoded."""
    spans = sink.wait_for_spans(count=2, timeout=10)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"parent", "child"}
    parent, child = by_name["parent"], by_name["child"]

    assert child.attributes == {
        "str": "hello",
        "int": 42,
        "float": 3.25,
        "bool": True,
        "strs": ["a", "b"],
        "ints": [1, 2, 3],
    }
    # Exact types matter: a bool must not come back as int, nor an int as float.
    assert type(child.attributes["bool"]) is bool
    assert type(child.attributes["int"]) is int
    assert type(child.attributes["float"]) is float

    assert child.parent_span_id == parent.span_id
    assert parent.parent_span_id == ""
    assert child.trace_id == parent.trace_id
    assert len(child.trace_id) == 32 and len(child.span_id) == 16

    assert child.kind == trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
    assert parent.kind == trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
    assert child.status_code == trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
    assert child.status_message == "boom"
    assert child.events == [("cache.miss", {"key": "k1", "size": 7})]
    assert child.scope == "selftest.scope" and child.scope_version == "1.2.3"
    assert child.resource["service.name"] == SERVICE
    assert child.resource["deployment.environment"] == "test"
    assert 0 < child.start_time_unix_nano <= child.end_time_unix_nano


def test_grpc_span_round_trip(rotel: tuple[RotelCollector, OtlpSink]) -> None:
    """Spans sent over OTLP/gRPC reach the sink through rotel with all fields intact."""
    collector, sink = rotel
    provider = _tracer_provider(GrpcSpanExporter(endpoint=collector.grpc_endpoint, insecure=True))
    try:
        _emit_parent_and_child(provider)
        _assert_parent_and_child(sink)
    finally:
        provider.shutdown()


def test_http_span_round_trip(rotel: tuple[RotelCollector, OtlpSink]) -> None:
    """Spans sent over OTLP/HTTP protobuf reach the sink through rotel with all fields intact."""
    collector, sink = rotel
    provider = _tracer_provider(HttpSpanExporter(endpoint=f"{collector.http_endpoint}/v1/traces"))
    try:
        _emit_parent_and_child(provider)
        _assert_parent_and_child(sink)
    finally:
        provider.shutdown()


def test_histogram_and_counter_round_trip(rotel: tuple[RotelCollector, OtlpSink]) -> None:
    """A histogram keeps its bounds, counts and sum, and a counter its value, through rotel."""
    collector, sink = rotel
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=collector.grpc_endpoint, insecure=True),
        # Long interval: only the explicit force_flush below should export.
        export_interval_millis=60_000,
    )
    bounds = [0.1, 1.0, 10.0]
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": SERVICE}),
        views=[View(instrument_name="selftest.latency", aggregation=ExplicitBucketHistogramAggregation(bounds))],
    )
    try:
        meter = provider.get_meter("selftest.meter")
        hist = meter.create_histogram("selftest.latency", unit="s", description="request latency")
        for value in (0.05, 0.5, 0.7, 5.0, 50.0):
            hist.record(value, {"route": "/x"})
        meter.create_counter("selftest.requests").add(3, {"route": "/x"})
        assert provider.force_flush(10_000)

        (point,) = sink.wait_for_metrics("selftest.latency", timeout=10)
        assert point.kind == "histogram"
        assert point.unit == "s" and point.description == "request latency"
        assert point.explicit_bounds == bounds
        assert point.bucket_counts == [1, 2, 1, 1]
        assert point.value == 5
        assert point.sum == pytest.approx(56.25)
        assert point.attributes == {"route": "/x"}
        assert point.resource["service.name"] == SERVICE
        assert point.scope == "selftest.meter"

        (counter,) = sink.wait_for_metrics("selftest.requests", timeout=10)
        assert counter.kind == "sum"
        assert counter.value == 3 and type(counter.value) is int
        assert counter.is_monotonic is True
        assert counter.sum is None and counter.bucket_counts is None and counter.explicit_bounds is None
    finally:
        provider.shutdown()


def _pid_alive(pid: int) -> bool:
    """True when a process (zombies included) with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def test_stop_leaves_no_process(tmp_path: pathlib.Path) -> None:
    """stop() terminates and reaps rotel-agent, closes its ports, and is idempotent."""
    _require_rotel()
    with OtlpSink() as sink:
        collector = RotelCollector(sink, tmp_path)
        collector.start()
        pid = collector.pid
        assert pid is not None and _pid_alive(pid) and collector.is_running()
        port = collector.grpc_port

        collector.stop()
        # stop() reaps the child, so the pid must vanish entirely rather than linger as a zombie.
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(pid), f"rotel-agent pid {pid} still exists after stop()"
        assert not collector.is_running()
        assert collector.last_pid == pid

        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        collector.stop()  # second stop is a no-op


def test_two_collectors_run_side_by_side(tmp_path: pathlib.Path) -> None:
    """Parallel instances get distinct ports and log files and do not collide."""
    _require_rotel()
    with running_collector(tmp_path / "a") as (first, _), running_collector(tmp_path / "b") as (second, _):
        assert {first.grpc_port, first.http_port}.isdisjoint({second.grpc_port, second.http_port})
        assert first.log_path != second.log_path
        assert first.is_running() and second.is_running()


def test_startup_failure_reports_log_tail(tmp_path: pathlib.Path) -> None:
    """A rotel that exits during startup raises RotelStartError quoting its own output, and leaves nothing running."""
    _require_rotel()
    with OtlpSink() as sink:
        collector = RotelCollector(sink, tmp_path, extra_env={"ROTEL_EXPORTER": "no-such-exporter"})
        with pytest.raises(RotelStartError, match="no-such-exporter"):
            collector.start()
        assert not collector.is_running()


def test_wait_for_spans_timeout_lists_what_arrived(rotel: tuple[RotelCollector, OtlpSink]) -> None:
    """wait_for_spans fails with a summary of the spans that did arrive, and clear() forgets them."""
    collector, sink = rotel
    provider = _tracer_provider(GrpcSpanExporter(endpoint=collector.grpc_endpoint, insecure=True))
    try:
        provider.get_tracer("t").start_span("actually-sent", attributes={"k": "v"}).end()
        sink.wait_for_spans(lambda s: s.name == "actually-sent", timeout=10)

        with pytest.raises(AssertionError, match="actually-sent") as info:
            sink.wait_for_spans(lambda s: s.name == "never-sent", timeout=0.3)
        assert "0 matched, 1 received" in str(info.value)

        with pytest.raises(AssertionError, match="actually-sent"):
            sink.wait_for_spans(count=2, timeout=0.3)

        with pytest.raises(AssertionError, match="metrics received"):
            sink.wait_for_metrics("no.such.metric", timeout=0.3)

        sink.clear()
        assert sink.spans() == []
    finally:
        provider.shutdown()


def test_sink_decodes_direct_grpc_export() -> None:
    """The sink alone decodes every AnyValue kind and absent ids, without rotel in the path."""

    def kv(key: str, value: common_pb2.AnyValue) -> common_pb2.KeyValue:
        """Build a KeyValue."""
        return common_pb2.KeyValue(key=key, value=value)

    nested = common_pb2.AnyValue(
        kvlist_value=common_pb2.KeyValueList(values=[kv("inner", common_pb2.AnyValue(int_value=-5))])
    )
    span = trace_pb2.Span(
        name="direct",
        trace_id=bytes(range(16)),
        span_id=bytes(range(1, 9)),
        parent_span_id=b"\x00" * 8,  # all-zero means "no parent" on the wire
        attributes=[
            kv("bytes", common_pb2.AnyValue(bytes_value=b"\x00\xff")),
            kv("nested", nested),
            kv("empty", common_pb2.AnyValue()),
            kv(
                "mixed",
                common_pb2.AnyValue(
                    array_value=common_pb2.ArrayValue(
                        values=[common_pb2.AnyValue(double_value=0.5), common_pb2.AnyValue(bool_value=False)]
                    )
                ),
            ),
        ],
    )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=[kv("service.name", common_pb2.AnyValue(string_value="d"))]),
                scope_spans=[trace_pb2.ScopeSpans(spans=[span])],
            )
        ]
    )
    with OtlpSink() as sink:
        with grpc.insecure_channel(sink.endpoint.removeprefix("http://")) as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=5)
        (received,) = sink.wait_for_spans(timeout=5)
    assert received.trace_id == bytes(range(16)).hex()
    assert received.span_id == "0102030405060708"
    assert received.parent_span_id == ""
    assert received.attributes == {
        "bytes": b"\x00\xff",
        "nested": {"inner": -5},
        "empty": None,
        "mixed": [0.5, False],
    }
    assert received.resource == {"service.name": "d"}
    assert decode_any_value(common_pb2.AnyValue(string_value="")) == ""
