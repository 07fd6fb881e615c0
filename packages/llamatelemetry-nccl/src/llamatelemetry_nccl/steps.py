"""One trace per training step across ranks: trace and parent ids derived from (run id, step), no communication."""

from __future__ import annotations

import hashlib

import attrs


def _digest(run_id: str, step: int, salt: str, size: int) -> int:
    value = int.from_bytes(hashlib.blake2b(f"{run_id}\x00{step}\x00{salt}".encode(), digest_size=size).digest(), "big")
    # Zero is the invalid id in W3C trace context; any other value is as good.
    return value or 1


def step_trace_id(run_id: str, step: int) -> int:
    """The 128-bit trace id every rank gives step ``step`` of run ``run_id``."""
    return _digest(run_id, step, "trace", 16)


def step_root_span_id(run_id: str, step: int) -> int:
    """The 64-bit id of the step's implicit root: the remote parent of every rank's step span."""
    return _digest(run_id, step, "root", 8)


@attrs.frozen
class StepContext:
    """The step a collective ran in: its number, whether its ops get spans, and its span's context (or ``None``).

    Example::

        StepContext(number=12, sampled=True, span_context=span.get_span_context())
    """

    number: int
    sampled: bool
    span_context: object | None = None
