"""Tests of ``InferenceEvents``/``EventRecorder`` and the figures derived from them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from llamatelemetry.errors import IncompleteEventsError, LlamaTelemetryError
from llamatelemetry.inference import events as events_module
from llamatelemetry.inference.events import EventRecorder, InferenceEvents
from llamatelemetry.inference.metrics import InferenceMetrics, compute_all_metrics, compute_tps, compute_ttft

MS = 1_000_000  # nanoseconds per millisecond
S = 1_000_000_000  # nanoseconds per second
T0 = 5_000 * S  # an arbitrary perf_counter origin


def events_at(start: int | None = None, first: int | None = None, done: int | None = None,
              n_tokens: int | None = None, chunks: list[int] | None = None) -> InferenceEvents:
    """Events with timestamps set directly (nanoseconds)."""
    return InferenceEvents(request_start_ns=start, first_token_ns=first, completion_ns=done, n_tokens=n_tokens,
                           chunk_ns=list(chunks or []))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A controllable clock: append the next readings; each record_* call takes the first one left."""
    readings: list[int] = []

    def now() -> int:
        assert readings, "the fake clock ran out of readings"
        return readings.pop(0)

    monkeypatch.setattr(events_module, "_now", now)
    yield readings
    assert readings == [], "not every reading was used"


# ----------------------------------------------------------------------------- compute_ttft / compute_tps


def test_compute_ttft_in_milliseconds() -> None:
    assert compute_ttft(events_at(start=T0, first=T0 + 250 * MS)) == pytest.approx(250.0)
    assert compute_ttft(events_at(start=T0, first=T0 + 1_500)) == pytest.approx(0.0015)
    assert compute_ttft(events_at(start=T0, first=T0)) == 0.0


def test_compute_tps() -> None:
    events = events_at(start=T0, first=T0 + 100 * MS, done=T0 + 2 * S, n_tokens=100)
    assert compute_tps(events) == pytest.approx(50.0)
    # An explicit n_tokens wins over the recorded one.
    assert compute_tps(events, n_tokens=300) == pytest.approx(150.0)
    assert compute_tps(events, n_tokens=0) == 0.0


def test_compute_tps_needs_no_first_token() -> None:
    assert compute_tps(events_at(start=T0, done=T0 + 4 * S), n_tokens=10) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("events", "missing_field", "missing_call"),
    [
        (events_at(), "request_start_ns", "record_request_start()"),
        (events_at(first=T0), "request_start_ns", "record_request_start()"),
        (events_at(start=T0), "first_token_ns", "record_first_token()"),
        (events_at(start=T0, done=T0 + S, n_tokens=5), "first_token_ns", "record_first_token()"),
    ],
)
def test_compute_ttft_incomplete(events: InferenceEvents, missing_field: str, missing_call: str) -> None:
    with pytest.raises(IncompleteEventsError) as excinfo:
        compute_ttft(events)
    assert missing_field in str(excinfo.value)
    assert missing_call in str(excinfo.value)
    assert isinstance(excinfo.value, LlamaTelemetryError)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("events", "missing_field", "missing_call"),
    [
        (events_at(done=T0, n_tokens=3), "request_start_ns", "record_request_start()"),
        (events_at(start=T0, first=T0 + MS), "completion_ns", "record_completion(n_tokens)"),
    ],
)
def test_compute_tps_incomplete(events: InferenceEvents, missing_field: str, missing_call: str) -> None:
    with pytest.raises(IncompleteEventsError) as excinfo:
        compute_tps(events, n_tokens=10)
    assert missing_field in str(excinfo.value)
    assert missing_call in str(excinfo.value)


def test_compute_tps_without_token_count() -> None:
    # completion_ns set directly, so no count was ever given.
    events = events_at(start=T0, done=T0 + S)
    with pytest.raises(IncompleteEventsError) as excinfo:
        compute_tps(events)
    assert "n_tokens" in str(excinfo.value)
    assert "record_completion(n_tokens)" in str(excinfo.value)
    assert compute_tps(events, n_tokens=7) == pytest.approx(7.0)


def test_require_names_first_missing() -> None:
    events = events_at(start=T0)
    events.require("request_start_ns")
    with pytest.raises(IncompleteEventsError, match=r"completion_ns was never recorded: call record_completion"):
        events.require("request_start_ns", "completion_ns", "first_token_ns")


# ----------------------------------------------------------------------------- compute_all_metrics


def test_compute_all_metrics_full() -> None:
    events = events_at(start=T0, first=T0 + 200 * MS, done=T0 + 2_200 * MS, n_tokens=101,
                       chunks=[T0 + 200 * MS, T0 + 220 * MS, T0 + 250 * MS, T0 + 350 * MS])
    metrics = compute_all_metrics(events)
    assert metrics.n_tokens == 101
    assert metrics.ttft_ms == pytest.approx(200.0)
    assert metrics.e2e_ms == pytest.approx(2_200.0)
    assert metrics.tps == pytest.approx(101 / 2.2)
    assert metrics.decode_tps == pytest.approx(50.0)  # 100 tokens after the first in 2 s
    assert metrics.tpot_ms == pytest.approx(20.0)
    assert metrics.chunk_gaps_ms == pytest.approx((20.0, 30.0, 100.0))
    assert isinstance(metrics.chunk_gaps_ms, tuple)


def test_compute_all_metrics_explicit_token_count_wins() -> None:
    events = events_at(start=T0, first=T0 + S, done=T0 + 3 * S, n_tokens=5)
    metrics = compute_all_metrics(events, n_tokens=41)
    assert metrics.n_tokens == 41
    assert metrics.tps == pytest.approx(41 / 3)
    assert metrics.decode_tps == pytest.approx(20.0)
    assert metrics.tpot_ms == pytest.approx(50.0)


def test_compute_all_metrics_missing_figures_are_none() -> None:
    metrics = compute_all_metrics(events_at())
    assert metrics == InferenceMetrics(n_tokens=None, ttft_ms=None, e2e_ms=None, tps=None, decode_tps=None,
                                       tpot_ms=None, chunk_gaps_ms=())


def test_compute_all_metrics_without_first_token() -> None:
    metrics = compute_all_metrics(events_at(start=T0, done=T0 + S, n_tokens=10))
    assert metrics.ttft_ms is None
    assert metrics.decode_tps is None and metrics.tpot_ms is None
    assert metrics.e2e_ms == pytest.approx(1_000.0)
    assert metrics.tps == pytest.approx(10.0)


def test_compute_all_metrics_without_completion() -> None:
    metrics = compute_all_metrics(events_at(start=T0, first=T0 + 30 * MS))
    assert metrics.ttft_ms == pytest.approx(30.0)
    assert metrics.e2e_ms is None and metrics.tps is None
    assert metrics.decode_tps is None and metrics.tpot_ms is None


@pytest.mark.parametrize("n_tokens", [0, 1])
def test_no_decode_figures_for_one_token_or_less(n_tokens: int) -> None:
    metrics = compute_all_metrics(events_at(start=T0, first=T0 + MS, done=T0 + S, n_tokens=n_tokens))
    assert metrics.decode_tps is None
    assert metrics.tpot_ms is None
    assert metrics.tps == pytest.approx(float(n_tokens))


def test_zero_elapsed_gives_no_rate() -> None:
    metrics = compute_all_metrics(events_at(start=T0, first=T0, done=T0, n_tokens=4))
    assert metrics.e2e_ms == 0.0
    assert metrics.tps is None
    assert metrics.decode_tps is None


def test_metrics_agree_with_single_functions() -> None:
    events = events_at(start=T0, first=T0 + 123 * MS, done=T0 + 1_789 * MS, n_tokens=64)
    metrics = compute_all_metrics(events)
    assert metrics.ttft_ms == pytest.approx(compute_ttft(events))
    assert metrics.tps == pytest.approx(compute_tps(events))


# ----------------------------------------------------------------------------- InferenceMetrics as a dict


def test_metrics_dict_style_access() -> None:
    metrics = compute_all_metrics(events_at(start=T0, first=T0 + 10 * MS, done=T0 + S, n_tokens=3,
                                            chunks=[T0 + 10 * MS, T0 + 15 * MS]))
    assert metrics["ttft_ms"] == metrics.ttft_ms == pytest.approx(10.0)
    assert metrics["n_tokens"] == 3
    assert metrics["chunk_gaps_ms"] == pytest.approx((5.0,))
    assert list(metrics) == ["n_tokens", "ttft_ms", "e2e_ms", "tps", "decode_tps", "tpot_ms", "chunk_gaps_ms"]
    assert "tps" in metrics
    assert "as_dict" not in metrics
    as_dict = metrics.as_dict()
    assert type(as_dict) is dict
    assert set(as_dict) == set(metrics)
    for key in metrics:
        expected = metrics[key]
        actual = as_dict[key]
        assert (list(actual) == list(expected)) if key == "chunk_gaps_ms" else (actual == expected)


@pytest.mark.parametrize("key", ["nope", "as_dict", "__class__", "TTFT_MS"])
def test_metrics_unknown_key_raises_key_error(key: str) -> None:
    metrics = compute_all_metrics(events_at())
    with pytest.raises(KeyError):
        metrics[key]


# ----------------------------------------------------------------------------- recording


def test_record_calls_use_the_clock(clock: list[int]) -> None:
    clock.extend([T0, T0 + 40 * MS, T0 + 900 * MS])
    events = InferenceEvents()
    events.record_request_start()
    events.record_first_token()
    events.record_completion(n_tokens=10)
    assert (events.request_start_ns, events.first_token_ns, events.completion_ns) == (T0, T0 + 40 * MS,
                                                                                       T0 + 900 * MS)
    assert events.n_tokens == 10
    assert compute_ttft(events) == pytest.approx(40.0)


def test_first_token_is_kept_once_recorded(clock: list[int]) -> None:
    clock.append(T0 + 5)
    events = InferenceEvents()
    events.record_first_token()
    events.record_first_token()  # keeps the first time (the clock has no reading for it)
    clock.append(T0 + 20)
    events.record_chunk()
    assert events.first_token_ns == T0 + 5
    assert events.chunk_ns == [T0 + 20]


def test_record_chunk_gaps(clock: list[int]) -> None:
    clock.extend([T0, T0 + 100 * MS, T0 + 110 * MS, T0 + 135 * MS, T0 + 235 * MS, T0 + 300 * MS])
    events = InferenceEvents()
    events.record_request_start()
    for _ in range(4):
        events.record_chunk()
    events.record_completion(n_tokens=4)
    # The first chunk is also the first token.
    assert events.first_token_ns == T0 + 100 * MS
    assert events.chunk_ns == [T0 + 100 * MS, T0 + 110 * MS, T0 + 135 * MS, T0 + 235 * MS]
    metrics = compute_all_metrics(events)
    assert metrics.chunk_gaps_ms == pytest.approx((10.0, 25.0, 100.0))
    assert metrics.ttft_ms == pytest.approx(100.0)
    assert metrics.e2e_ms == pytest.approx(300.0)
    assert metrics.tpot_ms == pytest.approx(200.0 / 3)


def test_single_chunk_has_no_gaps(clock: list[int]) -> None:
    clock.append(T0)
    events = InferenceEvents()
    events.record_chunk()
    assert compute_all_metrics(events).chunk_gaps_ms == ()


@pytest.mark.parametrize("n_tokens", [-1, 1.0, "3", None, True])
def test_record_completion_rejects_bad_counts(n_tokens: object) -> None:
    events = InferenceEvents()
    with pytest.raises(ValueError, match="n_tokens") as excinfo:
        events.record_completion(n_tokens)  # type: ignore[arg-type]
    assert ">= 0" in str(excinfo.value)
    assert events.completion_ns is None
    assert events.n_tokens is None


def test_record_completion_zero_tokens_allowed() -> None:
    events = InferenceEvents()
    events.record_completion(0)
    assert events.n_tokens == 0
    assert events.completion_ns is not None


def test_records_use_monotonic_perf_counter() -> None:
    assert events_module._now is time.perf_counter_ns
    assert time.get_clock_info("perf_counter").monotonic
    events = InferenceEvents()
    before = time.perf_counter_ns()
    events.record_request_start()
    events.record_chunk()
    events.record_completion(1)
    after = time.perf_counter_ns()
    recorded = [events.request_start_ns, events.first_token_ns, *events.chunk_ns, events.completion_ns]
    assert all(isinstance(value, int) for value in recorded)
    assert before <= recorded[0] <= recorded[1] <= recorded[2] <= recorded[3] <= after


def test_events_instances_do_not_share_chunks() -> None:
    first, second = InferenceEvents(), InferenceEvents()
    first.record_chunk()
    assert second.chunk_ns == []


# ----------------------------------------------------------------------------- EventRecorder


def test_event_recorder(clock: list[int]) -> None:
    clock.extend([T0, T0 + 50 * MS, T0 + 60 * MS, T0 + 80 * MS, T0 + 1_050 * MS])
    recorder = EventRecorder()
    recorder.start()
    recorder.first_token()
    recorder.chunk()
    recorder.chunk()
    recorder.done(21)
    events = recorder.events
    assert events.request_start_ns == T0
    assert events.first_token_ns == T0 + 50 * MS  # chunk() keeps the earlier first token
    assert events.chunk_ns == [T0 + 60 * MS, T0 + 80 * MS]
    metrics = recorder.metrics()
    assert isinstance(metrics, InferenceMetrics)
    assert metrics.n_tokens == 21
    assert metrics.ttft_ms == pytest.approx(50.0)
    assert metrics.e2e_ms == pytest.approx(1_050.0)
    assert metrics.tps == pytest.approx(20.0)
    assert metrics.decode_tps == pytest.approx(20 / 1.0)
    assert metrics.tpot_ms == pytest.approx(50.0)
    assert metrics.chunk_gaps_ms == pytest.approx((20.0,))


def test_event_recorder_metrics_before_done() -> None:
    recorder = EventRecorder()
    recorder.start()
    metrics = recorder.metrics()
    assert metrics.n_tokens is None
    assert metrics.e2e_ms is None
    assert metrics.ttft_ms is None


def test_event_recorder_done_validates() -> None:
    with pytest.raises(ValueError, match="n_tokens"):
        EventRecorder().done(-5)


def test_compute_tps_refuses_a_zero_elapsed_time() -> None:
    from llamatelemetry.errors import IncompleteEventsError

    events = events_at(start=T0, first=T0, done=T0, n_tokens=5)
    with pytest.raises(IncompleteEventsError, match="no time elapsed"):
        compute_tps(events)
