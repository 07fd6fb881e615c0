"""Timestamps of one request on a monotonic clock (``time.perf_counter_ns``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs

from llamatelemetry.errors import IncompleteEventsError

if TYPE_CHECKING:
    from llamatelemetry.inference.metrics import InferenceMetrics

__all__ = ["InferenceEvents", "EventRecorder"]

_now = time.perf_counter_ns


@attrs.define
class InferenceEvents:
    """When a request started, produced its first token, produced each chunk and completed.

    Timestamps are nanoseconds from ``time.perf_counter_ns`` (monotonic: immune to wall-clock
    changes). Recording a chunk costs one ``list.append``.

    Example::

        events = InferenceEvents()
        events.record_request_start()
        for chunk in stream:
            events.record_chunk()          # the first chunk also records the first token
        events.record_completion(n_tokens=42)
    """

    request_start_ns: int | None = None
    first_token_ns: int | None = None
    completion_ns: int | None = None
    n_tokens: int | None = None
    chunk_ns: list[int] = attrs.field(factory=list)

    def record_request_start(self) -> None:
        """The request was sent (or handed to the engine)."""
        self.request_start_ns = _now()

    def record_first_token(self) -> None:
        """The first token arrived; later calls keep the first time."""
        if self.first_token_ns is None:
            self.first_token_ns = _now()

    def record_chunk(self) -> None:
        """A streamed chunk arrived (the first one is also the first token)."""
        now = _now()
        self.chunk_ns.append(now)
        if self.first_token_ns is None:
            self.first_token_ns = now

    def record_completion(self, n_tokens: int) -> None:
        """The request finished with ``n_tokens`` output tokens."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
            raise ValueError(f"n_tokens={n_tokens!r} must be an integer >= 0 (the number of output tokens).")
        self.completion_ns = _now()
        self.n_tokens = n_tokens

    def require(self, *fields: str) -> None:
        """Raise ``IncompleteEventsError`` naming the first missing timestamp among ``fields``."""
        calls = {"request_start_ns": "record_request_start()", "first_token_ns": "record_first_token()",
                 "completion_ns": "record_completion(n_tokens)"}
        for field in fields:
            if getattr(self, field) is None:
                raise IncompleteEventsError(f"{field} was never recorded: call {calls.get(field, field)} first.")


class EventRecorder:
    """A shorter spelling of ``InferenceEvents``: ``start()``, ``first_token()``, ``chunk()``, ``done(n)``."""

    def __init__(self) -> None:
        self.events = InferenceEvents()

    def start(self) -> None:
        """Record the request start."""
        self.events.record_request_start()

    def first_token(self) -> None:
        """Record the first token."""
        self.events.record_first_token()

    def chunk(self) -> None:
        """Record a streamed chunk."""
        self.events.record_chunk()

    def done(self, n_tokens: int) -> None:
        """Record the completion with its output token count."""
        self.events.record_completion(n_tokens)

    def metrics(self) -> InferenceMetrics:
        """All the derived figures (see ``compute_all_metrics``)."""
        from llamatelemetry.inference.metrics import compute_all_metrics

        return compute_all_metrics(self.events, self.events.n_tokens)

