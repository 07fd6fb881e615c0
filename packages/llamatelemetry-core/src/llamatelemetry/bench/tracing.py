"""Spans of a benchmark: ``benchmark {test}`` per test, ``benchmark request`` per request (parent of the GenAI span)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from llamatelemetry.semconv import llamatelemetry as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from llamatelemetry.bench.config import LoadSpec
    from llamatelemetry.bench.records import RequestRecord

__all__ = ["test_span", "request_span", "finish_request_span", "TEST_SPAN_PREFIX", "REQUEST_SPAN"]

TEST_SPAN_PREFIX = "benchmark"
REQUEST_SPAN = "benchmark request"


@contextmanager
def test_span(spec: LoadSpec, num_requests: int) -> Iterator[Span]:
    """The span of one test; request spans started inside it become its children (asyncio tasks included)."""
    from llamatelemetry._runtime import get_tracer

    attributes: dict[str, Any] = {names.BENCH_TEST: spec.name, names.BENCH_MODE: spec.mode,
                                  names.BENCH_NUM_REQUESTS: num_requests}
    if spec.concurrency is not None:
        attributes[names.BENCH_CONCURRENCY] = spec.concurrency
    if spec.request_rate is not None:
        attributes[names.BENCH_REQUEST_RATE] = spec.request_rate
    with get_tracer().start_as_current_span(f"{TEST_SPAN_PREFIX} {spec.name}", attributes=attributes) as span:
        yield span


@contextmanager
def request_span(test: str, index: int, prompt_id: str, warmup: bool) -> Iterator[Span]:
    """The span of one request; the backend's or client's GenAI span nests under it."""
    from llamatelemetry._runtime import get_tracer

    attributes: dict[str, Any] = {names.BENCH_TEST: test, names.BENCH_REQUEST_INDEX: index,
                                  names.BENCH_PROMPT_ID: prompt_id, names.BENCH_WARMUP: warmup}
    # The request's own failure is recorded by finish_request_span; nothing propagates out of the harness.
    with get_tracer().start_as_current_span(REQUEST_SPAN, attributes=attributes, record_exception=False,
                                            set_status_on_exception=False) as span:
        yield span


def trace_id_of(span: Span) -> str | None:
    """The span's trace id as 32 hex digits (``None`` for a non-recording span)."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def finish_request_span(span: Span, record: RequestRecord, error: BaseException | None) -> None:
    """Put the harness's own figures on the request span (timestamps were taken already; this runs after)."""
    if not span.is_recording():
        return
    from llamatelemetry.decorators import record_error

    attributes: dict[str, Any] = {names.BENCH_SCHEDULE_LAG: record.schedule_lag_ms / 1e3}
    if record.gaps_ms:
        attributes[names.BENCH_INTER_CHUNK_GAP_MAX] = max(record.gaps_ms) / 1e3
    if record.tokens_per_chunk:
        attributes[names.BENCH_TOKENS_PER_CHUNK_MAX] = max(record.tokens_per_chunk)
    span.set_attributes(attributes)
    if error is not None:
        record_error(span, error)
