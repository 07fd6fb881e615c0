"""What a metrics buffer overflow during an outage costs, by temporality (docs/configuration.md, outage section).

A real rotel collector forwards to a gRPC sink and is stopped while a counter keeps being collected
into a retry buffer too small for the outage: older collections are dropped and counted. Under
cumulative temporality the newest collection, kept, still carries the counter's total; under delta
each dropped collection's increment is lost for good (and counted).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from llamatelemetry.otel.export import ExportStats
from llamatelemetry.otel.exporters import build_otlp_exporter
from llamatelemetry.otel.retry import RetryingMetricExporter, RetryPolicy

otlp_sink = pytest.importorskip("otlp_sink")

pytestmark = pytest.mark.timeout(120)

NAME = "test.outage.requests"
POLICY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, timeout_s=2.0)


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_beyond_the_buffer_cumulative_keeps_the_total_and_delta_loses_the_dropped_increments(
        otlp_collector: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, temporality: str) -> None:
    rotel, sink = otlp_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality)
    stats = ExportStats()
    exporter = RetryingMetricExporter(
        build_otlp_exporter(rotel.grpc_endpoint, signal="metrics", retry=False, timeout_s=2.0), stats,
        buffer_size=2, policy=POLICY)  # one point per collection: at most two collections are held
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("outage-test").create_counter(NAME)
    try:
        counter.add(1)
        assert reader.force_flush(10_000), "the collector is up: the first collection is delivered"
        rotel.stop()
        for _ in range(6):
            counter.add(1)
            reader.force_flush(2_000)  # returns at the first failed send; the buffer keeps the collection
        assert stats.failed > 0 and stats.dropped > 0, stats
        rotel.restart_on_same_ports()
        deadline = time.monotonic() + 20
        while exporter.buffer.buffered and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exporter.buffer.buffered == 0, "the buffer drains once the collector is back"
        # Read before shutdown: its final collection would bring the cumulative total by itself.
        exported, lost = stats.exported, stats.dropped  # one point, one increment of 1, per dropped collection
        assert sink._wait(lambda: sum(1 for p in sink.metric_points() if p.name == NAME) >= exported, 15)
        received = [p for p in sink.metric_points() if p.name == NAME]
    finally:
        provider.shutdown()

    total = 7
    assert len(received) == exported, "every collection sent reaches the collector, once"
    assert lost > 0
    if temporality == "cumulative":
        # The newest collection is kept: the counter's total arrives, only intermediate points are missing.
        assert received[-1].value == max(p.value for p in received) == total, [p.value for p in received]
    else:
        # Each collection holds only the change since the previous one: what was dropped is gone.
        assert sum(p.value for p in received) == total - lost, ([p.value for p in received], lost)
