"""What the backend and the ``generate`` instrumentation share: the token clock, exact counts, phase spans.

``TokenClock`` is a streamer ``generate`` hands the prompt once and then every decoding step's
tokens: it only reads the clock there (the user's own streamer, if any, still gets everything), so
time to first token is the real moment the first new token exists. ``count_outputs`` counts each
sequence's new tokens from the ids ``generate`` returned. ``record_phases`` turns the clock's marks
into ``transformers.prefill`` / ``transformers.decode`` child spans with real start and end times.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from llamatelemetry.semconv import gen_ai
from llamatelemetry_transformers import semconv as names

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer

__all__ = ["TokenClock", "SequenceCount", "count_outputs", "eos_token_ids", "record_phases", "phase_rates"]


class TokenClock:
    """A ``generate`` streamer that timestamps the prompt hand-off and each decoding step, then forwards them.

    ``prompt_ns`` is when ``generate`` finished preparing the inputs (prefill starts), ``steps_ns``
    one wall-clock time per decoding step (the first is the first new token), ``ended_ns`` when
    generation ended. Per step the cost is one clock read and a list append.
    """

    __slots__ = ("ended_ns", "inner", "prompt_ns", "steps_ns")

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.prompt_ns = 0
        self.steps_ns: list[int] = []
        self.ended_ns = 0

    def put(self, value: Any) -> None:
        """Called by ``generate``: the prompt first, then each step's new tokens."""
        now = time.time_ns()
        if self.prompt_ns:
            self.steps_ns.append(now)
        else:
            self.prompt_ns = now
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        """Called by ``generate`` once generation is over."""
        self.ended_ns = time.time_ns()
        if self.inner is not None:
            self.inner.end()

    @property
    def first_token_ns(self) -> int | None:
        """When the first new token existed, or ``None`` if none did."""
        return self.steps_ns[0] if self.steps_ns else None


@attrs.frozen
class SequenceCount:
    """One generated sequence: its exact new-token count, the ids, and why it ended."""

    output_tokens: int
    token_ids: Sequence[int]
    finish_reason: str


def eos_token_ids(*configs: Any, tokenizer: Any = None) -> frozenset[int]:
    """The end-of-sequence ids from the first generation config that has any, else from the tokenizer."""
    for config in configs:
        value = getattr(config, "eos_token_id", None) if config is not None else None
        if value is not None:
            return frozenset(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    return frozenset([int(eos)]) if eos is not None else frozenset()


def count_outputs(rows: Iterable[Sequence[int]], eos_ids: frozenset[int], *, pad_id: int | None,
                  max_new_tokens: int | None, batched: bool) -> list[SequenceCount]:
    """Count each row of new token ids up to its end-of-sequence token; say why each ended.

    In a batch, ``generate`` fills a sequence that finished early (end-of-sequence or a stop
    string) with the pad id until the longest is done: trailing pads are not the sequence's tokens.
    """
    counts: list[SequenceCount] = []
    for row in rows:
        ids = list(row)
        end = next((index for index, token in enumerate(ids) if token in eos_ids), None)
        if end is not None:
            counts.append(SequenceCount(end, ids[:end], gen_ai.FINISH_REASON_STOP))
            continue
        length = len(ids)
        if batched and pad_id is not None:
            while length and ids[length - 1] == pad_id:
                length -= 1
        if length < len(ids) or (max_new_tokens is not None and length < max_new_tokens):
            reason = gen_ai.FINISH_REASON_STOP  # a stop string or another stopping criterion
        else:
            reason = gen_ai.FINISH_REASON_LENGTH
        counts.append(SequenceCount(length, ids[:length], reason))
    return counts


def phase_rates(clock: TokenClock, prompt_tokens: int) -> tuple[float | None, float | None]:
    """(prefill tokens/s, decode tokens/s) from the clock's marks; ``None`` where the time is unknown or zero."""
    first = clock.first_token_ns
    prefill = None
    if first is not None and clock.prompt_ns and first > clock.prompt_ns:
        prefill = prompt_tokens / ((first - clock.prompt_ns) / 1e9)
    decode = None
    steps = clock.steps_ns
    if len(steps) > 1 and steps[-1] > steps[0]:
        decode = (len(steps) - 1) / ((steps[-1] - steps[0]) / 1e9)
    return prefill, decode


def record_phases(tracer: Tracer, clock: TokenClock, prompt_tokens: int, *, parent: Context | None = None,
                  error: BaseException | None = None) -> None:
    """The ``transformers.prefill`` and ``transformers.decode`` spans, from the clock's marks (nothing without them).

    With ``error``, the phase that was running when generation failed ends with it, at the failure time.
    """
    if not clock.prompt_ns:
        return  # generate failed before it started on the prompt: no phase ran
    from llamatelemetry.decorators import record_error

    prefill_rate, decode_rate = phase_rates(clock, prompt_tokens)
    first = clock.first_token_ns
    prefill = tracer.start_span(names.SPAN_PREFILL, context=parent, start_time=clock.prompt_ns, attributes={
        names.PHASE: names.PHASE_PREFILL, names.PHASE_TOKENS: prompt_tokens,
        **({names.PHASE_TOKENS_PER_SECOND: prefill_rate} if prefill_rate else {}),
    })
    if first is None:
        if error is not None:
            record_error(prefill, error)
        prefill.end(end_time=clock.ended_ns or time.time_ns())
        return
    prefill.end(end_time=first)
    steps = clock.steps_ns
    decode = tracer.start_span(names.SPAN_DECODE, context=parent, start_time=first, attributes={
        names.PHASE: names.PHASE_DECODE, names.PHASE_TOKENS: len(steps) - 1,
        **({names.PHASE_TOKENS_PER_SECOND: decode_rate} if decode_rate else {}),
    })
    if error is not None:
        record_error(decode, error)
        decode.end(end_time=clock.ended_ns or time.time_ns())
        return
    decode.end(end_time=steps[-1])
