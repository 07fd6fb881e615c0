"""The prefill and decode phases of one request: their spans, the token loop, and the per-``llama_decode`` histograms.

``prefill()`` evaluates the prompt tokens the KV cache does not hold inside a ``llama_cpp.prefill``
span; ``decode()`` samples and evaluates token by token inside a ``llama_cpp.decode`` span. The
backend's timed ``llama_decode`` wrapper fills a log of (seconds, tokens) per call, which
``record_decode_calls()`` turns into histogram points on the plugin's own instruments (with them,
the KV-cache gauge and the model-load histogram).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs

from llamatelemetry.semconv import gen_ai
from llamatelemetry_llamacpp import semconv as names

__all__ = ["Instruments", "plugin_instruments", "record_decode_calls", "Prefill", "prefill", "Decoded", "decode"]


# ------------------------------------------------------------------ per-call metrics

@attrs.frozen
class Instruments:
    """The plugin's own instruments on one meter."""

    meter: Any
    decode_duration: Any
    decode_batch_size: Any
    kv_cache_usage: Any
    model_load_duration: Any


def plugin_instruments() -> Instruments:
    """The decode-call histograms, the KV gauge and the load histogram on the current meter (made once per meter)."""
    from llamatelemetry.otel import cached_instruments

    return cached_instruments("llamatelemetry_llamacpp", _create_instruments)


def _create_instruments(meter: Any) -> Instruments:
    from llamatelemetry.semconv.metrics import DURATION_BUCKETS, SERVER_TTFT_BUCKETS, TOKEN_USAGE_BUCKETS

    # Single-token decode calls take well under 10 ms: add the finer TTFT boundaries at the low end.
    fine = sorted({*SERVER_TTFT_BUCKETS, *DURATION_BUCKETS})
    return Instruments(
        meter=meter,
        decode_duration=meter.create_histogram(
            names.METRIC_DECODE_DURATION, unit="s", description="Duration of one llama_decode call.",
            explicit_bucket_boundaries_advisory=fine),
        decode_batch_size=meter.create_histogram(
            names.METRIC_DECODE_BATCH_SIZE, unit="{token}", description="Tokens in one llama_decode call.",
            explicit_bucket_boundaries_advisory=list(TOKEN_USAGE_BUCKETS)),
        kv_cache_usage=meter.create_gauge(
            names.METRIC_KV_CACHE_USAGE, unit="1",
            description="Share of the context the KV cache holds after a request, 0 to 1."),
        model_load_duration=meter.create_histogram(
            names.METRIC_MODEL_LOAD_DURATION, unit="s", description="Time llama.cpp took to load a model's weights.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS)),
    )


def record_decode_calls(instruments: Instruments, model_name: str | None, decode_log: Sequence[tuple[float, int]],
                        prefill_calls: int) -> None:
    """A duration and a batch-size point per ``llama_decode`` call; the first ``prefill_calls`` calls are prefill."""
    # The metric names say llama_cpp already; fewer attributes make each of these many records cheaper.
    model = {gen_ai.GEN_AI_REQUEST_MODEL: model_name} if model_name else {}
    prefill_phase = {**model, names.PHASE: names.PHASE_PREFILL}
    decode_phase = {**model, names.PHASE: names.PHASE_DECODE}
    duration, batch = instruments.decode_duration.record, instruments.decode_batch_size.record
    for index, (seconds, tokens) in enumerate(decode_log):
        phase = prefill_phase if index < prefill_calls else decode_phase
        duration(seconds, phase)
        batch(tokens, phase)


# ------------------------------------------------------------------ prefill

@attrs.frozen
class Prefill:
    """What the prefill phase did: tokens evaluated, ``llama_decode`` calls, and its speed when measurable."""

    tokens: int
    calls: int
    tokens_per_second: float | None


def prefill(tracer: Any, llm: Any, prompt: Sequence[int], reused: int, decode_log: list[tuple[float, int]]) -> Prefill:
    """The ``llama_cpp.prefill`` span: the prompt tokens the cache does not hold, in ``n_batch`` chunks."""
    from llamatelemetry.decorators import record_error

    prefill_span = tracer.start_span(names.SPAN_PREFILL)
    prefill_start = time.perf_counter()
    try:
        llm.eval(prompt[reused:])
    except BaseException as exc:
        record_error(prefill_span, exc)
        prefill_span.end()
        raise
    prefill_seconds = time.perf_counter() - prefill_start
    n_evaluated = len(prompt) - reused
    prefill_calls = len(decode_log)
    prefill_tps = n_evaluated / prefill_seconds if prefill_seconds > 0 else None
    if prefill_span.is_recording():
        prefill_span.set_attributes({names.PHASE_TOKENS: n_evaluated, names.DECODE_CALLS: prefill_calls,
                                     gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: reused,
                                     **({names.PHASE_TOKENS_PER_SECOND: prefill_tps} if prefill_tps else {})})
    prefill_span.end()
    return Prefill(tokens=n_evaluated, calls=prefill_calls, tokens_per_second=prefill_tps)


# ------------------------------------------------------------------ decode

@attrs.frozen
class Decoded:
    """What the decode phase produced and when (``time.perf_counter()`` seconds)."""

    #: The generated text's bytes, cut before a stop string that was found.
    text: bytes
    output_tokens: int
    finish_reason: str
    #: When the first token was sampled.
    first_at: float
    #: When the loop ended.
    ended: float
    tokens_per_second: float | None


def decode(tracer: Any, llama_cpp: Any, llm: Any, ctx: Any, sampler: Any, stops: Sequence[str], max_new: int,
           decode_log: list[tuple[float, int]], prefill_calls: int) -> Decoded:
    """The ``llama_cpp.decode`` span: sample; stop on end-of-generation, stop string or limit; else evaluate it."""
    from llamatelemetry.decorators import record_error

    vocab = llm._model.vocab
    decode_span = tracer.start_span(names.SPAN_DECODE)
    output: list[int] = []
    text = bytearray()
    finish = gen_ai.FINISH_REASON_LENGTH
    first_at = last_at = 0.0
    stop_bytes = [s.encode("utf-8") for s in stops]
    longest_stop = max((len(s) for s in stop_bytes), default=0)
    piece = _PieceReader(llama_cpp, vocab)
    sample, is_eog, sampler_ptr = llama_cpp.llama_sampler_sample, llama_cpp.llama_vocab_is_eog, sampler.sampler
    clock = time.perf_counter
    try:
        while True:
            token = sample(sampler_ptr, ctx, -1)
            last_at = clock()
            if not first_at:
                first_at = last_at
            if is_eog(vocab, token):
                finish = gen_ai.FINISH_REASON_STOP
                break
            output.append(token)
            chunk = piece(token)
            text += chunk
            if longest_stop:
                # Only a stop string that ends in the new bytes can be new.
                window = max(0, len(text) - len(chunk) - longest_stop + 1)
                found = [i for i in (text.find(s, window) for s in stop_bytes) if i >= 0]
                if found:
                    del text[min(found):]
                    finish = gen_ai.FINISH_REASON_STOP
                    break
            if len(output) >= max_new:
                break
            llm.eval((token,))
    except BaseException as exc:
        record_error(decode_span, exc)
        decode_span.end()
        raise
    ended = clock()
    n_out = len(output)
    decode_tps = (n_out - 1) / (last_at - first_at) if n_out > 1 and last_at > first_at else None
    if decode_span.is_recording():
        decode_span.set_attributes({
            names.PHASE_TOKENS: n_out, names.DECODE_CALLS: len(decode_log) - prefill_calls,
            **({names.PHASE_TOKENS_PER_SECOND: decode_tps} if decode_tps else {})})
    decode_span.end()
    return Decoded(text=bytes(text), output_tokens=n_out, finish_reason=finish, first_at=first_at, ended=ended,
                   tokens_per_second=decode_tps)


class _PieceReader:
    """A token's text bytes through one reused buffer (``Llama.detokenize`` allocates one per call)."""

    def __init__(self, llama_cpp: Any, vocab: Any) -> None:
        import ctypes

        self._to_piece = llama_cpp.llama_token_to_piece
        self._vocab = vocab
        self._ctypes = ctypes
        self._size = 64
        self._buffer = ctypes.create_string_buffer(self._size)

    def __call__(self, token: int) -> bytes:
        n = int(self._to_piece(self._vocab, token, self._buffer, self._size, 0, False))
        if n < 0:  # the piece is longer than the buffer: llama.cpp says how long
            self._size = -n
            self._buffer = self._ctypes.create_string_buffer(self._size)
            n = int(self._to_piece(self._vocab, token, self._buffer, self._size, 0, False))
        return self._buffer.raw[:n]
