"""BenchmarkRunner against a real llama.cpp server (xllamacpp, 4 slots, tiny model) and in-process llama.cpp."""

from __future__ import annotations

import itertools
import socket
import statistics
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.bench import BenchmarkRunner, Prompt, builtin_prompts, poisson_schedule
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as names
from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("httpx")

SHORT = builtin_prompts("short")


def _runner() -> BenchmarkRunner:
    # No GPU sampling: these tests are about the load and the figures, identical with or without a GPU.
    return BenchmarkRunner(gpu_monitor=None)


def test_output_tokens_are_the_servers_usage_not_chunk_counts(bench_server: Any) -> None:
    """A stop string makes llama.cpp hold text back, so chunks carry several tokens: counts still match usage."""
    with InMemoryTelemetry() as telemetry:
        report = _runner().run(bench_server.base_url, prompts=SHORT, n_tokens=48, concurrency=2, num_requests=4,
                               warmup=0, extra_body={"stop": ["e@@@"]})
        client_spans = [s for s in telemetry.spans() if s.name.startswith("chat ")]
    test = report.tests[0]
    records = test.requests
    assert len(records) == 4 and all(r.ok for r in records)
    usage_by_trace = {format(s.context.trace_id, "032x"): s.attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS]
                      for s in client_spans if s.context is not None and s.attributes is not None}
    for record in records:
        assert record.output_tokens == 48  # ignore_eos: exactly n_tokens
        assert record.trace_id is not None
        assert record.output_tokens == usage_by_trace[record.trace_id]  # the client span's usage, the same request
        assert record.tokens_per_chunk is not None
        assert sum(record.tokens_per_chunk) == record.output_tokens
    assert any(r.chunks < r.output_tokens for r in records if r.output_tokens), "no chunk carried several tokens"
    assert (test.summary.metrics["tokens_per_chunk"].max or 0) >= 2
    # The server's own counter moved by exactly the measured requests' output (warm-up and nothing else).
    assert test.summary.server is not None
    assert test.summary.server["tokens_predicted"] == test.summary.total_output_tokens == 4 * 48
    assert test.summary.server.figures["tokens_predicted"].unit == "tokens"


def test_client_ttft_is_never_below_the_servers_prompt_time(bench_server: Any) -> None:
    report = _runner().run(bench_server.base_url, n_tokens=8, concurrency=4)  # the 12 built-in prompts, cold
    test = report.tests[0]
    assert test.summary.completed == 12 and test.summary.failed == 0
    for record in test.requests:
        assert record.ttft_ms is not None and record.server_prompt_ms is not None
        assert record.ttft_ms >= record.server_prompt_ms, record
        assert record.e2e_ms is not None and record.e2e_ms >= record.ttft_ms
        assert record.cached_input_tokens == 0  # cache_prompt=False by default: every prompt measured cold
        assert len(record.gaps_ms) == record.chunks - 1
    lengths = {p.id: p.length_class for p in builtin_prompts()}
    by_class = {c: [r.input_tokens or 0 for r in test.requests if lengths[r.prompt_id] == c]
                for c in ("short", "medium", "long")}
    assert max(by_class["short"]) < min(by_class["medium"]) < max(by_class["medium"]) < min(by_class["long"])


def test_concurrency_four_really_overlaps_and_one_does_not(bench_server: Any) -> None:
    runner = _runner()
    one = runner.run(bench_server.base_url, prompts=SHORT, n_tokens=128, concurrency=1, num_requests=4).tests[0]
    # Long responses, so the four streams share many decode steps even on a busy machine.
    four = runner.run(bench_server.base_url, prompts=SHORT, n_tokens=512, concurrency=4, num_requests=8).tests[0]
    assert one.summary.max_in_flight == 1 and one.summary.max_decoding_at_once == 1
    assert one.summary.server is not None and one.summary.server["busy_slots_per_decode"] == 1.0
    # Four streams were decoding at the same instant on the client's clock ...
    assert four.summary.max_in_flight == 4 and four.summary.max_decoding_at_once >= 3
    # ... and the server says the same: more tokens than llama_decode calls means several slots per batch.
    server = four.summary.server
    assert server is not None and server["tokens_predicted"] == 8 * 512
    decode_calls = server["decode_calls"]
    assert decode_calls is not None and decode_calls < 0.8 * 8 * 512
    assert server["max_busy_slots"] is not None  # /slots was polled (what it saw depends on timing: not asserted)


def test_warmup_requests_are_excluded_everywhere(bench_server: Any) -> None:
    report = _runner().run(bench_server.base_url, prompts=SHORT, n_tokens=16, num_requests=2, warmup=3)
    summary = report.tests[0].summary
    assert len(report.tests[0].requests) == 2
    assert summary.warmup_requests == 3 and summary.completed == 2
    assert summary.server is not None and summary.server["tokens_predicted"] == 2 * 16
    assert all(r.prompt_id != "warmup" for r in report.tests[0].requests)


def test_poisson_arrivals_follow_the_seeded_schedule(bench_server: Any) -> None:
    report = _runner().run(bench_server.base_url, prompts=SHORT, n_tokens=8, request_rate=40.0, num_requests=10,
                           seed=3, warmup=0)
    test = report.tests[0]
    assert test.mode == "rate" and test.name == "rate=40/s" and test.request_rate == 40.0
    expected = poisson_schedule(40.0, 10, seed=3)
    assert [round(r.scheduled_s, 9) for r in test.requests] == [round(e, 9) for e in expected]
    # Each request goes out when it is due: never early (exact, up to the clocks' rounding), and late only by
    # event-loop wake-ups, bounded loosely since a busy 2-core machine can delay any one of them (a per-request
    # 50 ms bound flaked). That the loop never waits for an answer is checked structurally in the next test.
    lags = [r.sent_s - r.scheduled_s for r in test.requests]
    assert min(lags) >= -1e-3, lags
    assert statistics.median(lags) < 0.5, lags
    assert test.summary.metrics["schedule_lag_ms"].max is not None


def test_the_open_loop_never_waits_for_an_answer(bench_server: Any) -> None:
    """Requests all due at once all go out before any answer is read: the runner does not wait for one.

    Structural, not timed: at this rate every request is already due when the loop reaches it, so all are
    started before the event loop gets to read any response, however busy the machine is.
    """
    report = _runner().run(bench_server.base_url, prompts=SHORT, n_tokens=8, request_rate=1e9, num_requests=6,
                           seed=3, warmup=0)
    requests = report.tests[0].requests
    assert len(requests) == 6 and all(r.ok and r.e2e_ms is not None for r in requests)
    first_answer_end = min(r.sent_s + (r.e2e_ms or 0.0) / 1e3 for r in requests)
    assert max(r.sent_s for r in requests) < first_answer_end


def test_poisson_schedule_is_seeded_and_has_the_asked_rate() -> None:
    first, again, other = poisson_schedule(5.0, 2000, 1), poisson_schedule(5.0, 2000, 1), poisson_schedule(5.0, 2000, 2)
    assert first == again and first != other and first[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 5.0, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(1 / 5.0, rel=0.15)  # exponential: stdev equals the mean


def test_errors_are_counted_by_type(bench_server: Any) -> None:
    too_long = Prompt.of(" ".join(["telemetry"] * 3000), id="too-long")  # far past a slot's 1024 tokens
    report = _runner().run(bench_server.base_url, prompts=[SHORT[0], too_long], n_tokens=8, warmup=0)
    summary = report.tests[0].summary
    assert summary.completed == 1 and summary.failed == 1
    assert summary.errors == {"ContextSizeExceededError": 1}
    assert summary.error_rate == 0.5
    failed = next(r for r in report.tests[0].requests if not r.ok)
    assert failed.prompt_id == "too-long" and "context" in (failed.error_message or "").lower()
    assert summary.metrics["ttft_ms"].count == 1  # a failure is in no latency figure


def test_prompt_cache_is_reported_and_can_be_disabled(bench_server: Any) -> None:
    same = [SHORT[1]] * 3
    warm = _runner().run(bench_server.base_url, prompts=same, n_tokens=8, cache_prompt=True, warmup=0)
    cold = _runner().run(bench_server.base_url, prompts=same, n_tokens=8, cache_prompt=False, warmup=0)
    assert warm.tests[0].summary.total_cached_input_tokens > 0
    assert any((r.cached_input_tokens or 0) > 0 for r in warm.tests[0].requests)
    assert cold.tests[0].summary.total_cached_input_tokens == 0
    assert all(r.cached_input_tokens == 0 for r in cold.tests[0].requests)


def test_every_request_is_traced_under_its_test(bench_server: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        report = _runner().run(bench_server.base_url, prompts=SHORT, n_tokens=8, concurrency=2, num_requests=4,
                               warmup=2)
        spans = telemetry.spans()
    (test_span,) = [s for s in spans if s.name == "benchmark concurrency=2"]
    request_spans = [s for s in spans if s.name == "benchmark request"]
    assert len(request_spans) == 6
    assert sum(1 for s in request_spans if (s.attributes or {}).get(names.BENCH_WARMUP)) == 2
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    for span in request_spans:
        assert span.parent is not None and test_span.context is not None
        assert span.parent.span_id == test_span.context.span_id
    clients = [s for s in spans if s.name.startswith("chat ")]
    assert len(clients) == 6
    for client in clients:
        assert client.parent is not None and by_id[client.parent.span_id].name == "benchmark request"
    traces = {format(s.context.trace_id, "032x") for s in request_spans if s.context is not None}
    assert {r.trace_id for r in report.tests[0].requests} <= traces


def test_environment_fingerprint_names_the_model_and_server(bench_server: Any) -> None:
    from llamatelemetry.artifacts import sha256_file

    report = _runner().run(bench_server.base_url, prompts=SHORT[:1], n_tokens=4, warmup=0)
    env = report.environment
    assert env["model"]["name"] == "tiny-bench"
    assert env["model"]["sha256"] == sha256_file(bench_server.model_path)  # the served file, hashed locally
    assert env["server"]["total_slots"] == 4 and "build_info" in env["server"]
    assert env["libraries"]["llamatelemetry-core"] and env["cpu"]["logical_cores"]
    assert report.config["n_tokens"] == 4 and report.config["cache_prompt"] is False
    assert "api_key" not in report.config


def test_an_unreachable_server_is_a_clear_error() -> None:
    from llamatelemetry_llamacpp.errors import ServerUnavailableError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ServerUnavailableError, match=r"Cannot reach the llama\.cpp server"):
        _runner().run(url, prompts=SHORT, n_tokens=4)


def test_in_process_backend_runs_through_the_engine_driver(bench_model: Path) -> None:
    """llama.cpp given only a model file: the engine driver, one in-process engine per concurrent stream."""
    pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python")
    runner = BenchmarkRunner(backend="llama.cpp", backend_options={"n_ctx": 1024, "n_threads": 1}, gpu_monitor=None)
    assert type(runner.driver(runner.config(model_path=bench_model))).__name__ == "EngineLoadDriver"
    with InMemoryTelemetry() as telemetry:
        report = runner.run(model_path=bench_model, prompts=SHORT[:3], n_tokens=8, warmup=1, hash_model=False)
        spans = telemetry.spans()
    test = report.tests[0]
    assert test.mode == "concurrency" and test.summary.completed == 3
    for record in test.requests:
        assert record.output_tokens == 8 and record.ttft_ms is not None and record.e2e_ms >= record.ttft_ms  # type: ignore[operator]
        assert record.gaps_ms == ()  # no stream in-process: no gaps rather than made-up ones
    assert sum(1 for s in spans if s.name == "benchmark request") == 4
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    engine_spans = [s for s in spans if s.parent is not None and s.parent.span_id in by_id
                    and by_id[s.parent.span_id].name == "benchmark request"]
    assert len(engine_spans) == 4  # each request's GenAI span sits under its request span, across the thread hop
    # Two streams, two engines, two threads: the requests really overlap.
    both = runner.run(model_path=bench_model, prompts=SHORT[:2], n_tokens=48, concurrency=2, num_requests=4,
                      warmup=0, hash_model=False).tests[0]
    assert both.summary.completed == 4 and both.summary.max_in_flight == 2
