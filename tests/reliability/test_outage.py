"""A collector outage loses nothing the buffer can hold, and never slows the caller (issue 15, item 2).

A real rotel collector forwards to a gRPC sink; mid-run the collector is stopped and restarted on
the same ports while the in-process llama.cpp backend (the tiny GGUF) keeps generating. The sink
must then hold every span exactly once and metric points collected during the gap; with a small
buffer, the oldest spans are dropped, counted, and the count reaches the collector as a metric.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llamatelemetry
from llamatelemetry.inference import InferenceEngine, InferenceRequest, SamplingParams
from llamatelemetry.otel.retry import EXPORT_DROPPED, RetryPolicy

otlp_sink = pytest.importorskip("otlp_sink")
pytest.importorskip("llama_cpp", reason='pip install "llamatelemetry-llamacpp[cpu]" (llama-cpp-python)')

INTERVAL_MS = 200
# Short backoff so the test sees recovery within a second; the send timeout bounds a blocked send.
POLICY = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, timeout_s=2.0)
REQUEST = InferenceRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=2,
                           sampling=SamplingParams(temperature=0.0, seed=1))


@pytest.fixture
def engine(tiny_gguf: Path) -> Iterator[InferenceEngine]:
    from llamatelemetry_llamacpp.backend import LlamaCppBackend

    with InferenceEngine(LlamaCppBackend(tiny_gguf, n_ctx=128, n_threads=1)) as started:
        yield started


def _generate_for(engine: InferenceEngine, seconds: float, rate_per_s: float = 50.0) -> list[float]:
    """Generate at about ``rate_per_s`` for ``seconds``; the caller's time of each request."""
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        engine.generate(REQUEST)
        took = time.perf_counter() - start
        times.append(took)
        time.sleep(max(0.0, 1 / rate_per_s - took))
    return times


def _init(rotel: Any, seen: InMemorySpanExporter, **options: Any) -> llamatelemetry.Telemetry:
    return llamatelemetry.init(service_name="outage-test", otlp_endpoint=rotel.grpc_endpoint,
                               metric_export_interval_ms=INTERVAL_MS, export_retry=POLICY, shutdown_timeout=15,
                               span_processors=[SimpleSpanProcessor(seen)], use_existing_providers=False,
                               set_global_providers=False, **options)


def _ours(points: list[Any]) -> list[Any]:
    return [p for p in points if p.resource.get("service.name") == "outage-test"]


def test_a_collector_restart_loses_no_span_and_no_metric_point(
    otlp_collector: tuple[Any, Any], engine: InferenceEngine
) -> None:
    rotel, sink = otlp_collector
    seen = InMemorySpanExporter()
    telemetry = _init(rotel, seen)

    up = _generate_for(engine, 1.5)
    rotel.stop()
    gap_start = time.time_ns()
    down = _generate_for(engine, 3.0)
    gap_end = time.time_ns()
    rotel.restart_on_same_ports()
    _generate_for(engine, 0.5)
    llamatelemetry.shutdown()  # delivers what is left (deadline 15 s here) and makes the counts final

    spans, points = telemetry.export_stats, telemetry.metric_export_stats
    assert points is not None
    assert spans.failed > 0 and points.failed > 0, "the outage really made exports fail"
    assert (spans.dropped, spans.undelivered, points.dropped, points.undelivered) == (0, 0, 0, 0), (spans, points)
    made = {format(s.context.span_id, "016x") for s in seen.get_finished_spans()}
    assert spans.exported == len(made) >= 100

    sink.wait_for_spans(count=len(made), timeout=15)
    received = [s.span_id for s in sink.spans() if s.resource.get("service.name") == "outage-test"]
    assert len(received) == len(set(received)), "no span is delivered twice"
    assert set(received) == made, f"{len(made - set(received))} spans lost"

    assert sink._wait(lambda: len(_ours(sink.metric_points())) >= points.exported, 15)
    delivered = _ours(sink.metric_points())
    assert len(delivered) == points.exported, "every metric point collected reaches the collector, once"
    durations = [p for p in delivered if p.name == "gen_ai.client.operation.duration"]
    in_gap = {p.time_unix_nano for p in durations if gap_start < p.time_unix_nano < gap_end}
    # 3 s at one collection per 200 ms: 15; half of that allows for a slow, shared machine.
    assert len(in_gap) >= 7, f"collections made during the outage were delivered after it: {len(in_gap)}"
    assert not [p for p in delivered if p.name == EXPORT_DROPPED], "nothing was dropped, so no drop count"

    # The caller never waits on the collector: the export runs on other threads.
    ratio = statistics.fmean(down) / statistics.fmean(up)
    print(f"caller time down/up {ratio:.2f}, slowest while down {max(down) * 1e3:.1f} ms, "
          f"{len(in_gap)} collections from the gap, {spans.failed} failed span sends")
    assert ratio <= 3.0, f"mean caller time per request grew {ratio:.2f}x while the collector was down"
    assert max(down) < POLICY.timeout_s, f"a request took {max(down):.2f} s while the collector was down"


def test_beyond_the_buffer_the_oldest_spans_are_dropped_counted_and_the_count_exported(
    otlp_collector: tuple[Any, Any], engine: InferenceEngine
) -> None:
    rotel, sink = otlp_collector
    seen = InMemorySpanExporter()
    telemetry = _init(rotel, seen, export_buffer_size=60)
    rotel.stop()
    for _ in range(40):
        engine.generate(REQUEST)
    made = [format(s.context.span_id, "016x") for s in seen.get_finished_spans()]
    expected_drops = len(made) - 60
    assert expected_drops > 0
    stats = telemetry.export_stats
    started = time.monotonic()
    assert telemetry.force_flush(10_000) is False, "nothing can be delivered while the collector is down"
    assert time.monotonic() - started < 5, "a flush does not wait out an outage (the buffer keeps retrying)"
    assert stats.dropped_by_reason.get("buffer_full") == expected_drops, stats

    rotel.restart_on_same_ports()
    llamatelemetry.shutdown()
    assert (stats.exported, stats.dropped, stats.undelivered) == (60, expected_drops, 0), stats

    sink.wait_for_spans(count=60, timeout=15)
    received = [s.span_id for s in sink.spans() if s.resource.get("service.name") == "outage-test"]
    assert received == made[-60:], "the newest spans are kept, in order; the oldest were dropped"

    def drop_count() -> float:
        counts = [p.value for p in _ours(sink.metric_points())
                  if p.name == EXPORT_DROPPED and p.attributes == {"signal": "traces", "reason": "buffer_full"}]
        return max(counts, default=0)

    assert sink._wait(lambda: drop_count() == expected_drops, 15), f"drop count exported: {drop_count()}"


def test_the_default_buffer_holds_what_a_60_s_outage_at_50_spans_per_second_makes(
    otlp_collector: tuple[Any, Any]
) -> None:
    """3,000 spans made while the collector is down (60 s at 50/s, made faster here) all arrive, once."""
    rotel, sink = otlp_collector
    seen = InMemorySpanExporter()
    telemetry = _init(rotel, seen)  # the default export_buffer_size
    rotel.stop()
    for index in range(60 * 50):
        with llamatelemetry.span("request while the collector is down", attributes={"index": index}):
            pass
        if index % 500 == 499:
            time.sleep(0.2)  # let the export thread try (and fail) along the way, as in a real outage
    time.sleep(1.0)
    assert telemetry.export_stats.failed > 0, "the outage really made exports fail"
    rotel.restart_on_same_ports()
    llamatelemetry.shutdown()
    stats = telemetry.export_stats
    made = {format(s.context.span_id, "016x") for s in seen.get_finished_spans()}
    assert len(made) == 3000
    assert (stats.dropped, stats.undelivered, stats.exported) == (0, 0, 3000), stats
    sink.wait_for_spans(count=3000, timeout=20)
    received = [s.span_id for s in sink.spans() if s.resource.get("service.name") == "outage-test"]
    assert len(received) == len(set(received)) == 3000 and set(received) == made
