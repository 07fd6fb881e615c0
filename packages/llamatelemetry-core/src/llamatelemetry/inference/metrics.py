"""Figures derived from ``InferenceEvents``: TTFT, tokens per second, time per output token."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from llamatelemetry.errors import IncompleteEventsError

if TYPE_CHECKING:
    from llamatelemetry.inference.events import InferenceEvents

__all__ = ["InferenceMetrics", "compute_ttft", "compute_tps", "compute_all_metrics"]


def compute_ttft(events: InferenceEvents) -> float:
    """Milliseconds from the request start to the first token."""
    events.require("request_start_ns", "first_token_ns")
    assert events.first_token_ns is not None and events.request_start_ns is not None
    return (events.first_token_ns - events.request_start_ns) / 1e6


def compute_tps(events: InferenceEvents, n_tokens: int | None = None) -> float:
    """Output tokens per second over the whole request (start to completion).

    ``n_tokens`` defaults to the count given to ``record_completion``.
    """
    events.require("request_start_ns", "completion_ns")
    assert events.completion_ns is not None and events.request_start_ns is not None
    tokens = events.n_tokens if n_tokens is None else n_tokens
    if tokens is None:
        raise IncompleteEventsError("no token count: pass n_tokens or call record_completion(n_tokens).")
    elapsed_s = (events.completion_ns - events.request_start_ns) / 1e9
    if elapsed_s <= 0:
        raise IncompleteEventsError("the completion was recorded at the request start: no time elapsed to divide by.")
    return tokens / elapsed_s


@attrs.frozen
class InferenceMetrics:
    """Every figure ``compute_all_metrics`` derives; ``None`` where a timestamp is missing.

    Also readable like a dict (``metrics["ttft_ms"]``).
    """

    n_tokens: int | None
    ttft_ms: float | None
    e2e_ms: float | None
    #: Output tokens per second over the whole request.
    tps: float | None
    #: Tokens per second after the first one (the decode phase).
    decode_tps: float | None
    #: Mean milliseconds per output token after the first.
    tpot_ms: float | None
    #: Milliseconds between consecutive streamed chunks (every gap, not an average).
    chunk_gaps_ms: tuple[float, ...]

    def __getitem__(self, key: str) -> Any:
        if key not in attrs.fields_dict(InferenceMetrics):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(attrs.fields_dict(InferenceMetrics))

    def as_dict(self) -> dict[str, Any]:
        """The figures as a plain dict."""
        return attrs.asdict(self)


def compute_all_metrics(events: InferenceEvents, n_tokens: int | None = None) -> InferenceMetrics:
    """TTFT, end-to-end time, tokens per second (whole request and decode), time per output token, chunk gaps."""
    tokens = events.n_tokens if n_tokens is None else n_tokens
    start, first, done = events.request_start_ns, events.first_token_ns, events.completion_ns
    ttft_ms = (first - start) / 1e6 if first is not None and start is not None else None
    e2e_ms = (done - start) / 1e6 if done is not None and start is not None else None
    tps = tokens / (e2e_ms / 1e3) if tokens is not None and e2e_ms else None
    decode_tps = tpot_ms = None
    if tokens is not None and tokens > 1 and first is not None and done is not None and done > first:
        decode_s = (done - first) / 1e9
        decode_tps = (tokens - 1) / decode_s
        tpot_ms = decode_s * 1e3 / (tokens - 1)
    chunks = events.chunk_ns
    gaps = tuple((b - a) / 1e6 for a, b in itertools.pairwise(chunks))
    return InferenceMetrics(n_tokens=tokens, ttft_ms=ttft_ms, e2e_ms=e2e_ms, tps=tps, decode_tps=decode_tps,
                            tpot_ms=tpot_ms, chunk_gaps_ms=gaps)
