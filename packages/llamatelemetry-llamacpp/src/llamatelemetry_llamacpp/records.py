"""The llama.cpp server's responses as typed, frozen records (what ``LlamaCppClient`` returns).

Example::

    resp = client.chat.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    resp.usage.prompt_tokens, resp.timings.cache_n, resp.choices[0].finish_reason

Every field the server may leave out is ``None``, never a made-up 0; ``raw`` keeps the server's
JSON for anything not modelled here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from llamatelemetry.inference.base import InferenceResult
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.semconv import semconv_finish_reason

__all__ = [
    "Usage",
    "Timings",
    "Choice",
    "ChatCompletion",
    "Completion",
    "Embedding",
    "EmbeddingsResponse",
    "Health",
    "ModelInfo",
    "StreamChunk",
    "StreamStats",
]


def as_int(value: Any) -> int | None:
    """``value`` if it is an int (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def as_str(value: Any) -> str | None:
    """``value`` if it is a str, else ``None``."""
    return value if isinstance(value, str) else None


@attrs.frozen
class Usage:
    """Token counts of one response; ``prompt_tokens`` includes ``cached_tokens``."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: Prompt tokens served from the prompt cache (``prompt_tokens_details.cached_tokens``).
    cached_tokens: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Usage | None:
        """Read an OpenAI-style ``usage`` object (``None`` when absent)."""
        if not isinstance(data, Mapping):
            return None
        details = data.get("prompt_tokens_details")
        cached = as_int(details.get("cached_tokens")) if isinstance(details, Mapping) else None
        return cls(as_int(data.get("prompt_tokens")), as_int(data.get("completion_tokens")),
                   as_int(data.get("total_tokens")), cached)


@attrs.frozen
class Timings:
    """The server's own ``timings`` for one response (milliseconds and tokens per second)."""

    cache_n: int | None = None
    prompt_n: int | None = None
    prompt_ms: float | None = None
    prompt_per_token_ms: float | None = None
    prompt_per_second: float | None = None
    predicted_n: int | None = None
    predicted_ms: float | None = None
    predicted_per_token_ms: float | None = None
    predicted_per_second: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> Timings | None:
        """Read llama.cpp's ``timings`` object (``None`` when absent)."""
        if not isinstance(data, Mapping):
            return None
        return cls(
            cache_n=as_int(data.get("cache_n")), prompt_n=as_int(data.get("prompt_n")),
            prompt_ms=as_float(data.get("prompt_ms")), prompt_per_token_ms=as_float(data.get("prompt_per_token_ms")),
            prompt_per_second=as_float(data.get("prompt_per_second")), predicted_n=as_int(data.get("predicted_n")),
            predicted_ms=as_float(data.get("predicted_ms")),
            predicted_per_token_ms=as_float(data.get("predicted_per_token_ms")),
            predicted_per_second=as_float(data.get("predicted_per_second")),
        )

    def attributes(self) -> dict[str, Any]:
        """The ``llamatelemetry.llama_cpp.timings.*`` span attributes (only the figures present)."""
        pairs = ((names.TIMINGS_CACHE_N, self.cache_n), (names.TIMINGS_PROMPT_N, self.prompt_n),
                 (names.TIMINGS_PROMPT_MS, self.prompt_ms), (names.TIMINGS_PROMPT_PER_SECOND, self.prompt_per_second),
                 (names.TIMINGS_PREDICTED_N, self.predicted_n), (names.TIMINGS_PREDICTED_MS, self.predicted_ms),
                 (names.TIMINGS_PREDICTED_PER_SECOND, self.predicted_per_second))
        return {key: value for key, value in pairs if value is not None}


@attrs.frozen
class Choice:
    """One choice of a chat completion; ``message`` is the server's dict (``message["content"]``)."""

    index: int
    message: dict[str, Any]
    #: As the server sent it (``stop``, ``length``, ``tool_calls``); see ``semconv_finish_reason``.
    finish_reason: str | None


@attrs.frozen
class ChatCompletion:
    """A ``/v1/chat/completions`` response."""

    id: str | None
    model: str | None
    created: int | None
    choices: tuple[Choice, ...]
    usage: Usage | None
    timings: Timings | None
    raw: dict[str, Any] = attrs.field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatCompletion:
        """Read the server's JSON."""
        choices = tuple(
            Choice(index=as_int(c.get("index")) or 0,
                   message=dict(c["message"]) if isinstance(c.get("message"), Mapping) else {},
                   finish_reason=as_str(c.get("finish_reason")))
            for c in data.get("choices") or () if isinstance(c, Mapping)
        )
        return cls(id=as_str(data.get("id")), model=as_str(data.get("model")), created=as_int(data.get("created")),
                   choices=choices, usage=Usage.from_json(data.get("usage")),
                   timings=Timings.from_json(data.get("timings")), raw=data)

    @property
    def text(self) -> str:
        """The first choice's message content ("" when there is none)."""
        if not self.choices:
            return ""
        content = self.choices[0].message.get("content")
        return content if isinstance(content, str) else ""


@attrs.frozen
class Completion:
    """A response of llama.cpp's native ``/completion``."""

    content: str
    model: str | None
    #: llama.cpp's reason to stop: ``eos``, ``word`` (a stop string), ``limit`` (n_predict) or ``none``.
    stop_type: str | None
    stopping_word: str | None
    tokens_predicted: int | None
    #: Prompt tokens, including those served from the cache.
    tokens_evaluated: int | None
    timings: Timings | None
    raw: dict[str, Any] = attrs.field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Completion:
        """Read the server's JSON."""
        return cls(content=as_str(data.get("content")) or "", model=as_str(data.get("model")),
                   stop_type=as_str(data.get("stop_type")), stopping_word=as_str(data.get("stopping_word")) or None,
                   tokens_predicted=as_int(data.get("tokens_predicted")),
                   tokens_evaluated=as_int(data.get("tokens_evaluated")),
                   timings=Timings.from_json(data.get("timings")), raw=data)

    @property
    def finish_reason(self) -> str | None:
        """``stop_type`` as a semantic-convention finish reason."""
        return semconv_finish_reason(self.stop_type)

    @property
    def usage(self) -> Usage:
        """The token counts in OpenAI's shape."""
        cached = self.timings.cache_n if self.timings is not None else None
        total = (self.tokens_evaluated + self.tokens_predicted
                 if self.tokens_evaluated is not None and self.tokens_predicted is not None else None)
        return Usage(self.tokens_evaluated, self.tokens_predicted, total, cached)


@attrs.frozen
class Embedding:
    """One input's embedding vector."""

    index: int
    embedding: list[float] = attrs.field(repr=lambda v: f"<{len(v)} floats>")


@attrs.frozen
class EmbeddingsResponse:
    """A ``/v1/embeddings`` response."""

    data: tuple[Embedding, ...]
    model: str | None
    usage: Usage | None
    raw: dict[str, Any] = attrs.field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingsResponse:
        """Read the server's JSON."""
        items = tuple(Embedding(index=as_int(item.get("index")) or 0, embedding=list(item.get("embedding") or []))
                      for item in data.get("data") or () if isinstance(item, Mapping))
        return cls(data=items, model=as_str(data.get("model")), usage=Usage.from_json(data.get("usage")), raw=data)


@attrs.frozen
class Health:
    """``/health``: ``status`` is ``"ok"`` once the model is loaded."""

    status: str
    raw: dict[str, Any] = attrs.field(repr=False)


@attrs.frozen
class ModelInfo:
    """One entry of ``/v1/models``; ``meta`` holds llama.cpp's figures (``n_ctx``, ``n_params``, ...)."""

    id: str
    owned_by: str | None
    created: int | None
    meta: dict[str, Any]
    raw: dict[str, Any] = attrs.field(repr=False)


@attrs.frozen
class StreamChunk:
    """One streamed event: ``delta_text`` is the text it adds ("" for role, finish and usage events)."""

    raw: dict[str, Any] = attrs.field(repr=False)
    delta_text: str
    #: As the server sent it (chat ``finish_reason``, or ``/completion``'s ``stop_type`` on its last event).
    finish_reason: str | None = None


@attrs.frozen
class StreamStats:
    """What the client measured and the server reported for one stream (final once it ended).

    Times are seconds on the client's clock from sending the request. ``chunks`` counts the
    events that carried generated text; llama.cpp may put several tokens in one.
    """

    chunks: int
    time_to_first_chunk: float | None
    duration: float
    usage: Usage | None
    timings: Timings | None
    #: Semantic-convention finish reason (``stop``, ``length``, ...).
    finish_reason: str | None
    server_finish_reason: str | None
    response_id: str | None
    model: str | None
    ended: bool
    closed_early: bool

    @property
    def input_tokens(self) -> int | None:
        """Prompt tokens including cached ones (usage, else the timings)."""
        return _input_tokens(self.usage, self.timings)

    @property
    def output_tokens(self) -> int | None:
        """Generated tokens (usage, else the timings)."""
        return _output_tokens(self.usage, self.timings)

    @property
    def cached_input_tokens(self) -> int | None:
        """Prompt tokens served from the cache (``timings.cache_n``)."""
        return _cached_tokens(self.usage, self.timings)

    def attributes(self) -> dict[str, Any]:
        """The span attributes beyond the GenAI usage ones: time to first chunk, chunks, server timings."""
        attributes: dict[str, Any] = {names.STREAM_CHUNKS: self.chunks}
        if self.time_to_first_chunk is not None:
            attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = self.time_to_first_chunk
        if self.closed_early:
            attributes[core_names.STREAM_CLOSED_EARLY] = True
        if self.timings is not None:
            attributes.update(self.timings.attributes())
        return attributes

    def to_inference_result(self, text: str, request_id: str | None = None, *,
                            attributes: Mapping[str, Any] | None = None) -> InferenceResult:
        """An ``InferenceResult``: client-clock TTFT and totals, the server's phase speeds beside them.

        Its ``attributes`` are ``attributes()`` unless others are given.
        """
        output = self.output_tokens
        timings = self.timings
        return InferenceResult(
            text=text,
            ttft_ms=self.time_to_first_chunk * 1e3 if self.time_to_first_chunk is not None else None,
            tps=output / self.duration if output is not None and self.duration > 0 else None,
            prefill_tps=timings.prompt_per_second if timings is not None else None,
            decode_tps=timings.predicted_per_second if timings is not None else None,
            input_tokens=self.input_tokens, output_tokens=output, cached_input_tokens=self.cached_input_tokens,
            total_ms=self.duration * 1e3, finish_reason=self.finish_reason, model=self.model,
            response_id=self.response_id, request_id=request_id,
            attributes=dict(attributes) if attributes is not None else self.attributes(),
        )


def _input_tokens(usage: Usage | None, timings: Timings | None) -> int | None:
    if usage is not None and usage.prompt_tokens is not None:
        return usage.prompt_tokens
    if timings is not None and timings.prompt_n is not None:
        return timings.prompt_n + (timings.cache_n or 0)
    return None


def _output_tokens(usage: Usage | None, timings: Timings | None) -> int | None:
    if usage is not None and usage.completion_tokens is not None:
        return usage.completion_tokens
    return timings.predicted_n if timings is not None else None


def _cached_tokens(usage: Usage | None, timings: Timings | None) -> int | None:
    if timings is not None and timings.cache_n is not None:
        return timings.cache_n
    return usage.cached_tokens if usage is not None else None

