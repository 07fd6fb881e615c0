"""``LlamaCppClient`` and ``AsyncLlamaCppClient``: thin, typed clients for llama.cpp's HTTP server.

Example::

    from llamatelemetry.llama import LlamaCppClient

    with LlamaCppClient("http://127.0.0.1:8090") as client:
        resp = client.chat.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=32)
        print(resp.choices[0].message["content"], resp.usage.prompt_tokens, resp.timings.cache_n)
        for chunk in client.chat.create(messages=[...], max_tokens=32, stream=True):
            print(chunk.delta_text, end="")

Telemetry. Each chat, text-completion and embeddings call is a CLIENT span named
``{gen_ai.operation.name} {model}`` (the model is the one asked for, else the server's own model
id, shown as a name: a ``.gguf`` path becomes its stem) with the GenAI request attributes at
start and the usage, finish reason and response id at the end; it records the
``gen_ai.client.*`` histograms. ``gen_ai.usage.input_tokens`` is the server's ``prompt_tokens``,
which includes the tokens served from the prompt cache; those are also
``gen_ai.usage.cache_read.input_tokens`` (``timings.cache_n``). The server's ``timings`` go on the
span as ``llamatelemetry.llama_cpp.timings.*``, beside the client's own clock, never instead of it.

A stream is one span from the request to its end: it ends when the stream is exhausted, closed,
or abandoned and garbage-collected (then ``llamatelemetry.stream.closed_early`` is true). While
iterating, the client only takes a timestamp per chunk; time to first chunk (the first chunk
that carries generated text) and the gaps between chunks are computed when the stream ends.
Streaming chat requests ask for ``stream_options.include_usage`` so usage is exact.

Through ``LlamaCppServerBackend`` inside an ``InferenceEngine``, the engine owns the request span
and the duration and token metrics; the client then opens no span of its own (see
``server_backend``). Nothing is recorded when telemetry is off (no ``init()`` and no
application provider). The API key is sent as ``Authorization: Bearer ...`` and appears in no
span, log or error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

import attrs

from llamatelemetry.errors import ValidationError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.errors import (
    LlamaCppError,
    ServerTimeoutError,
    ServerUnavailableError,
    StreamProtocolError,
    http_error,
)
from llamatelemetry_llamacpp.semconv import semconv_finish_reason

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The llama.cpp server client needs httpx, which is not installed. Install it with: pip install httpx"
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from llamatelemetry.semconv.content import CaptureMode

__all__ = [
    "DEFAULT_BASE_URL",
    "LlamaCppClient",
    "AsyncLlamaCppClient",
    "Stream",
    "AsyncStream",
    "StreamChunk",
    "StreamStats",
    "ChatCompletion",
    "Choice",
    "Completion",
    "EmbeddingsResponse",
    "Embedding",
    "Usage",
    "Timings",
    "Health",
    "ModelInfo",
    "semconv_finish_reason",
]

log = logging.getLogger("llamatelemetry.llama_cpp")

_R = TypeVar("_R")

DEFAULT_BASE_URL: Final = "http://127.0.0.1:8090"
PROVIDER: Final = gen_ai.PROVIDER_LLAMA_CPP

_CHAT_PATH: Final = "/v1/chat/completions"
_COMPLETION_PATH: Final = "/completion"
_EMBEDDINGS_PATH: Final = "/v1/embeddings"
_MAX_BACKOFF_S: Final = 8.0

# ==================================================================================== records


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _str(value: Any) -> str | None:
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
        cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else None
        return cls(_int(data.get("prompt_tokens")), _int(data.get("completion_tokens")),
                   _int(data.get("total_tokens")), cached)


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
            cache_n=_int(data.get("cache_n")), prompt_n=_int(data.get("prompt_n")),
            prompt_ms=_float(data.get("prompt_ms")), prompt_per_token_ms=_float(data.get("prompt_per_token_ms")),
            prompt_per_second=_float(data.get("prompt_per_second")), predicted_n=_int(data.get("predicted_n")),
            predicted_ms=_float(data.get("predicted_ms")),
            predicted_per_token_ms=_float(data.get("predicted_per_token_ms")),
            predicted_per_second=_float(data.get("predicted_per_second")),
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
            Choice(index=_int(c.get("index")) or 0,
                   message=dict(c["message"]) if isinstance(c.get("message"), Mapping) else {},
                   finish_reason=_str(c.get("finish_reason")))
            for c in data.get("choices") or () if isinstance(c, Mapping)
        )
        return cls(id=_str(data.get("id")), model=_str(data.get("model")), created=_int(data.get("created")),
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
        return cls(content=_str(data.get("content")) or "", model=_str(data.get("model")),
                   stop_type=_str(data.get("stop_type")), stopping_word=_str(data.get("stopping_word")) or None,
                   tokens_predicted=_int(data.get("tokens_predicted")),
                   tokens_evaluated=_int(data.get("tokens_evaluated")),
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
        items = tuple(Embedding(index=_int(item.get("index")) or 0, embedding=list(item.get("embedding") or []))
                      for item in data.get("data") or () if isinstance(item, Mapping))
        return cls(data=items, model=_str(data.get("model")), usage=Usage.from_json(data.get("usage")), raw=data)


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

    def to_inference_result(self, text: str, request_id: str | None = None) -> InferenceResult:
        """An ``InferenceResult``: client-clock TTFT and totals, the server's phase speeds beside them."""
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
            response_id=self.response_id, request_id=request_id, attributes=self.attributes(),
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


# ==================================================================================== endpoint


@attrs.frozen
class _Endpoint:
    base_url: str
    #: The URL for messages: no user-info, so credentials in a URL never reach a log.
    display_url: str
    address: str
    port: int

    @classmethod
    def parse(cls, base_url: str) -> _Endpoint:
        parts = urlsplit(base_url.strip()) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError("LlamaCppClient", "base_url", base_url,
                                  f"an http(s) URL such as {DEFAULT_BASE_URL!r}")
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            # An OpenAI-style base URL: the client adds /v1 itself for the OpenAI-compatible routes.
            path = path[:-3]
        port = parts.port or (443 if parts.scheme == "https" else 80)
        netloc = parts.netloc.rpartition("@")[2]
        display = urlunsplit((parts.scheme, netloc, path, "", ""))
        full = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        return cls(base_url=full, display_url=display, address=parts.hostname, port=port)


# ==================================================================================== telemetry


class _Mode(enum.Enum):
    #: Off: no telemetry at all.
    OFF = "off"
    #: The client's own span, metrics, content capture and request hooks.
    SPAN = "span"
    #: Inside an engine's request span: only the streaming histograms the engine does not record.
    ENGINE = "engine"


class _Outcome:
    """What a response said, filled by the parser or the stream while it runs."""

    __slots__ = ("parts", "response_id", "response_model", "server_finish_reason", "stamps", "timings_json",
                 "tokens_evaluated", "tokens_predicted", "usage_json")

    def __init__(self) -> None:
        self.usage_json: Any = None
        self.timings_json: Any = None
        self.server_finish_reason: str | None = None
        self.response_id: str | None = None
        self.response_model: str | None = None
        #: perf_counter() of each chunk that carried output; the only per-chunk telemetry work.
        self.stamps: list[float] = []
        self.parts: list[str] | None = None
        self.tokens_evaluated: int | None = None
        self.tokens_predicted: int | None = None

    def usage(self) -> Usage | None:
        usage = Usage.from_json(self.usage_json)
        if usage is None and (self.tokens_evaluated is not None or self.tokens_predicted is not None):
            timings = self.timings()
            usage = Usage(self.tokens_evaluated, self.tokens_predicted, None,
                          timings.cache_n if timings is not None else None)
        return usage

    def timings(self) -> Timings | None:
        return Timings.from_json(self.timings_json)

    @classmethod
    def of_chat(cls, response: ChatCompletion) -> _Outcome:
        outcome = cls()
        outcome.usage_json = response.raw.get("usage")
        outcome.timings_json = response.raw.get("timings")
        outcome.server_finish_reason = response.choices[0].finish_reason if response.choices else None
        outcome.response_id, outcome.response_model = response.id, response.model
        outcome.parts = [response.text]
        return outcome

    @classmethod
    def of_completion(cls, response: Completion) -> _Outcome:
        outcome = cls()
        outcome.timings_json = response.raw.get("timings")
        outcome.tokens_evaluated, outcome.tokens_predicted = response.tokens_evaluated, response.tokens_predicted
        outcome.server_finish_reason = response.stop_type
        outcome.response_model = response.model
        outcome.parts = [response.content]
        return outcome

    @classmethod
    def of_embeddings(cls, response: EmbeddingsResponse) -> _Outcome:
        outcome = cls()
        outcome.usage_json = response.raw.get("usage")
        outcome.response_model = response.model
        return outcome


def _telemetry_active() -> bool:
    from llamatelemetry.inference.engine import telemetry_active

    return telemetry_active()


_SAMPLING_ATTRIBUTES: Final = (
    ("temperature", gen_ai.GEN_AI_REQUEST_TEMPERATURE), ("top_p", gen_ai.GEN_AI_REQUEST_TOP_P),
    ("top_k", gen_ai.GEN_AI_REQUEST_TOP_K), ("frequency_penalty", gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY),
    ("repeat_penalty", core_names.REQUEST_REPEAT_PENALTY),
)


def _payload_attributes(payload: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    max_tokens = _int(payload.get("max_tokens", payload.get("n_predict")))
    if max_tokens is not None and max_tokens >= 0:
        attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    for key, attribute in _SAMPLING_ATTRIBUTES:
        value = _float(payload.get(key))
        if value is not None:
            attributes[attribute] = value
    seed = _int(payload.get("seed"))
    if seed is not None:
        attributes[gen_ai.GEN_AI_REQUEST_SEED] = seed
    stop = payload.get("stop")
    if isinstance(stop, str):
        attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop]
    elif isinstance(stop, (list, tuple)) and stop and all(isinstance(s, str) for s in stop):
        attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES] = list(stop)
    if stream:
        attributes[gen_ai.GEN_AI_REQUEST_STREAM] = True
    return attributes


def _hook_request(operation: str, payload: Mapping[str, Any], model: str | None) -> InferenceRequest | None:
    """The call as an ``InferenceRequest`` for the request hooks, if it can be one (absent fields: its defaults)."""
    from llamatelemetry.inference.types import SamplingParams

    if operation == gen_ai.OPERATION_CHAT:
        messages = payload.get("messages")
    else:
        prompt = payload.get("prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
    if messages is None:
        return None
    sampling = {key: payload[key] for key in ("temperature", "top_p", "top_k", "repeat_penalty", "frequency_penalty",
                                              "presence_penalty", "seed", "stop") if payload.get(key) is not None}
    options: dict[str, Any] = {"model": model, "stream": bool(payload.get("stream")), "operation": operation}
    max_tokens = _int(payload.get("max_tokens", payload.get("n_predict")))
    if max_tokens is not None and max_tokens >= 1:
        options["max_tokens"] = max_tokens
    try:
        return InferenceRequest(messages=messages, sampling=SamplingParams(**sampling), **options)
    except (ValidationError, TypeError, ValueError):
        log.debug("this %s call cannot be expressed as an InferenceRequest; request hooks are skipped", operation)
        return None


class _Op:
    """The telemetry of one call: its span (if any), its clock and its metric attributes."""

    __slots__ = ("capture", "client", "finished", "hook_request", "input_messages", "metric_attributes", "mode",
                 "operation", "span", "started", "stream")

    def __init__(self, client: _BaseClient, mode: _Mode, operation: str, stream: bool) -> None:
        self.client = client
        self.mode = mode
        self.operation = operation
        self.stream = stream
        self.span: Span | None = None
        self.metric_attributes: dict[str, Any] = {}
        self.capture: CaptureMode | None = None
        self.input_messages: list[dict[str, Any]] | None = None
        self.hook_request: InferenceRequest | None = None
        self.finished = False
        self.started = time.perf_counter()

    @property
    def keeps_text(self) -> bool:
        """Whether the generated text must be kept (content capture or request hooks need it)."""
        capture = self.capture
        return self.hook_request is not None or (capture is not None and (capture.on_span or capture.on_event))

    def current(self) -> contextlib.AbstractContextManager[Any]:
        """Make the span current (so instrumented HTTP libraries nest under it)."""
        if self.span is None:
            return contextlib.nullcontext()
        from opentelemetry import trace

        return trace.use_span(self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def finish(self, outcome: _Outcome | None, error: BaseException | None, *, closed_early: bool = False) -> None:
        """End the call's telemetry once; a failure here is logged, never raised into the caller."""
        if self.finished:
            return
        self.finished = True
        if self.mode is _Mode.OFF:
            return
        try:
            self._finish(outcome, error, closed_early)
        except Exception:
            self.client._telemetry_failed("finishing a span")
            if self.span is not None:
                with contextlib.suppress(Exception):
                    self.span.end()

    def _finish(self, outcome: _Outcome | None, error: BaseException | None, closed_early: bool) -> None:
        from llamatelemetry._runtime import genai_metrics
        from llamatelemetry.decorators import error_type, record_error
        from llamatelemetry.semconv.mapping import model_display_name

        ended = time.perf_counter()
        metrics = genai_metrics()
        attributes = self.metric_attributes
        if outcome is not None and outcome.response_model:
            attributes = {**attributes, gen_ai.GEN_AI_RESPONSE_MODEL: model_display_name(outcome.response_model)}
        stamps = outcome.stamps if outcome is not None else []
        if self.stream and stamps:
            # Every inter-chunk gap is kept (a real distribution), computed only now, off the hot path.
            metrics.time_to_first_chunk.record(stamps[0] - self.started, attributes)
            per_chunk = metrics.time_per_output_chunk
            for previous, current in itertools.pairwise(stamps):
                per_chunk.record(current - previous, attributes)
        if self.mode is not _Mode.SPAN:
            return
        stats = (_stats(outcome, self.started, ended, ended=True, closed_early=closed_early)
                 if outcome is not None else None)
        duration = ended - self.started
        if error is not None:
            metrics.operation_duration.record(duration, {**attributes, gen_ai.ERROR_TYPE: error_type(error)})
        else:
            metrics.operation_duration.record(duration, attributes)
            if stats is not None:
                for token_type, count in ((gen_ai.TOKEN_TYPE_INPUT, stats.input_tokens),
                                          (gen_ai.TOKEN_TYPE_OUTPUT, stats.output_tokens)):
                    if count is not None:
                        metrics.token_usage.record(count, {**attributes, gen_ai.GEN_AI_TOKEN_TYPE: token_type})
        span = self.span
        assert span is not None
        text = "".join(outcome.parts) if outcome is not None and outcome.parts is not None else None
        if span.is_recording() and stats is not None:
            span.set_attributes(self._response_attributes(stats))
        if error is not None:
            record_error(span, error)
        elif self.capture is not None and text is not None and self.operation != gen_ai.OPERATION_EMBEDDINGS:
            from llamatelemetry.semconv.content import record_content

            record_content(span, self.capture, input_messages=self.input_messages, output_text=text,
                           finish_reason=stats.finish_reason if stats is not None else None)
        if self.hook_request is not None:
            from llamatelemetry.plugins import get_plugin_manager

            result = (stats.to_inference_result(text or "", self.hook_request.request_id)
                      if stats is not None and error is None else None)
            get_plugin_manager().request_end(span, self.hook_request, result, error)
        span.end()

    def _response_attributes(self, stats: StreamStats) -> dict[str, Any]:
        from llamatelemetry.semconv.mapping import model_display_name, with_compat

        attributes: dict[str, Any] = {}
        for key, value in ((gen_ai.GEN_AI_USAGE_INPUT_TOKENS, stats.input_tokens),
                           (gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, stats.output_tokens),
                           (gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, stats.cached_input_tokens),
                           (gen_ai.GEN_AI_RESPONSE_ID, stats.response_id),
                           (gen_ai.GEN_AI_RESPONSE_MODEL, model_display_name(stats.model))):
            if value is not None:
                attributes[key] = value
        if stats.finish_reason:
            attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = [stats.finish_reason]
        if self.stream:
            attributes.update(stats.attributes())
        elif stats.timings is not None:
            attributes.update(stats.timings.attributes())
        return with_compat(attributes)


def _stats(outcome: _Outcome, started: float, now: float, *, ended: bool, closed_early: bool) -> StreamStats:
    stamps = outcome.stamps
    return StreamStats(
        chunks=len(stamps), time_to_first_chunk=stamps[0] - started if stamps else None, duration=now - started,
        usage=outcome.usage(), timings=outcome.timings(),
        finish_reason=semconv_finish_reason(outcome.server_finish_reason),
        server_finish_reason=outcome.server_finish_reason, response_id=outcome.response_id,
        model=outcome.response_model, ended=ended, closed_early=closed_early,
    )


# ==================================================================================== streams

_DONE: Final = "[DONE]"


class _StreamState(_Outcome):
    """Parses SSE lines of one stream into chunks; per chunk it only stores a timestamp."""

    __slots__ = ("done", "ended", "kind", "path", "url")

    def __init__(self, kind: Literal["chat", "completion"], url: str, path: str, keep_text: bool) -> None:
        super().__init__()
        self.kind = kind
        self.done = False
        self.ended = False
        self.url = url
        self.path = path
        if keep_text:
            self.parts = []

    @property
    def end_marker(self) -> str:
        return "the final 'data: [DONE]'" if self.kind == "chat" else 'a last event with "stop": true'

    def feed(self, line: str) -> StreamChunk | None:
        """One SSE line -> a chunk, or ``None`` (blank line, comment, other field, end marker)."""
        if not line.startswith("data:"):
            if line.startswith("error:"):
                raise self._server_error(line[6:].strip())
            return None  # blank separators, ': ping' comments, event:/id:/retry: fields
        body = line[5:].strip()
        if body == _DONE:
            self.done = True
            return None
        try:
            data = json.loads(body)
        except ValueError:
            raise StreamProtocolError(self.url, self.path,
                                      f"a 'data:' line is not JSON ({body[:60]!r}...)") from None
        if not isinstance(data, dict):
            raise StreamProtocolError(self.url, self.path, f"a 'data:' line holds {type(data).__name__}, not an object")
        now = time.perf_counter()
        if "error" in data and isinstance(data["error"], (dict, str)):
            raise self._server_error(json.dumps(data))
        return self._chat(data, now) if self.kind == "chat" else self._completion(data, now)

    def _chat(self, data: dict[str, Any], now: float) -> StreamChunk:
        text = ""
        finish: str | None = None
        choices = data.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                text = delta.get("content") or ""
                if text or delta.get("reasoning_content") or delta.get("tool_calls"):
                    self.stamps.append(now)
                    if self.parts is not None and text:
                        self.parts.append(text)
            finish = choice.get("finish_reason")
            if finish:
                self.server_finish_reason = finish
        if "usage" in data:
            self.usage_json = data["usage"]
        if "timings" in data:
            self.timings_json = data["timings"]
        if self.response_id is None:
            self.response_id = data.get("id")
            self.response_model = data.get("model")
        return StreamChunk(data, text, finish)

    def _completion(self, data: dict[str, Any], now: float) -> StreamChunk:
        text = data.get("content") or ""
        if text:
            self.stamps.append(now)
            if self.parts is not None:
                self.parts.append(text)
        if data.get("stop"):
            # llama.cpp's native stream has no [DONE]: the event with "stop": true is the last one.
            self.done = True
            self.server_finish_reason = data.get("stop_type")
            self.timings_json = data.get("timings")
            self.tokens_evaluated = _int(data.get("tokens_evaluated"))
            self.tokens_predicted = _int(data.get("tokens_predicted"))
            self.response_model = data.get("model")
            return StreamChunk(data, text, self.server_finish_reason)
        return StreamChunk(data, text, None)

    def _server_error(self, body: str) -> LlamaCppError:
        try:
            status = int(json.loads(body).get("error", {}).get("code", 500))
        except (ValueError, AttributeError, TypeError):
            status = 500
        return http_error(status, body, method="POST", path=self.path, url=self.url)


class _StreamBase:
    """What sync and async streams share: state, telemetry and the record of how they ended."""

    def __init__(self, state: _StreamState, op: _Op, timeout: float | None) -> None:
        self._state = state
        self._op = op
        self._timeout = timeout
        self._closed_early = False
        self._ended_at: float | None = None

    @property
    def stats(self) -> StreamStats:
        """What was measured so far (final once the stream ended)."""
        state = self._state
        now = self._ended_at if self._ended_at is not None else time.perf_counter()
        return _stats(state, self._op.started, now, ended=state.ended, closed_early=self._closed_early)

    @property
    def closed(self) -> bool:
        """Whether the stream has ended (exhausted, closed, failed or collected)."""
        return self._state.ended

    def _error_for(self, exc: BaseException) -> BaseException:
        state = self._state
        if isinstance(exc, httpx.TimeoutException):
            return ServerTimeoutError(state.url, "POST", state.path, self._timeout, "read")
        if isinstance(exc, httpx.HTTPError):
            return StreamProtocolError(state.url, state.path,
                                       f"the connection broke mid-stream ({type(exc).__name__}: {exc})")
        return exc

    def _truncated(self) -> StreamProtocolError:
        return StreamProtocolError(self._state.url, self._state.path,
                                   f"it ended without {self._state.end_marker}")


class Stream(_StreamBase):
    """A streamed response: iterate for ``StreamChunk`` objects; use ``with`` or ``close()`` to stop early."""

    def __init__(self, response: httpx.Response, state: _StreamState, op: _Op, timeout: float | None) -> None:
        super().__init__(state, op, timeout)
        self._response = response
        self._lines = response.iter_lines()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamChunk:
        state = self._state
        if state.ended:
            raise StopIteration
        if not state.done:
            try:
                for line in self._lines:
                    chunk = state.feed(line)
                    if chunk is not None:
                        return chunk
                    if state.done:
                        break
                else:
                    raise self._truncated()
            except BaseException as exc:
                error = self._error_for(exc)
                self._end(error)
                if error is exc:
                    raise
                raise error from exc
        self._end(None)
        raise StopIteration

    def _end(self, error: BaseException | None, *, closed_early: bool = False) -> None:
        if self._state.ended:
            return
        self._state.ended = True
        self._ended_at = time.perf_counter()
        self._closed_early = closed_early
        try:
            self._response.close()
        except Exception:  # the connection is dropped either way; the span must still end
            log.debug("closing a llama.cpp stream's response failed", exc_info=True)
        self._op.finish(self._state, error, closed_early=closed_early)

    def close(self) -> None:
        """Stop reading: the connection closes (the server stops generating) and the span ends."""
        self._end(None, closed_early=not self._state.done)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned stream still ends its span; nothing may escape a finalizer.
        try:
            if not self._state.ended:
                self._end(None, closed_early=not self._state.done)
        except Exception:
            pass


class AsyncStream(_StreamBase):
    """An async streamed response: ``async for`` over ``StreamChunk`` objects; ``aclose()`` to stop early."""

    def __init__(self, response: httpx.Response, state: _StreamState, op: _Op, timeout: float | None) -> None:
        super().__init__(state, op, timeout)
        self._response = response
        self._lines: AsyncIterator[str] = response.aiter_lines()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        state = self._state
        if state.ended:
            raise StopAsyncIteration
        if not state.done:
            try:
                while True:
                    try:
                        line = await self._lines.__anext__()
                    except StopAsyncIteration:
                        raise self._truncated() from None
                    chunk = state.feed(line)
                    if chunk is not None:
                        return chunk
                    if state.done:
                        break
            except BaseException as exc:
                error = self._error_for(exc)
                if isinstance(exc, asyncio.CancelledError):
                    # Cancelling the consumer is a close, not a server failure.
                    await self._aend(None, closed_early=True)
                    raise
                await self._aend(error)
                if error is exc:
                    raise
                raise error from exc
        await self._aend(None)
        raise StopAsyncIteration

    async def _aend(self, error: BaseException | None, *, closed_early: bool = False) -> None:
        if self._state.ended:
            return
        self._finish(error, closed_early)
        try:
            await self._response.aclose()
        except BaseException:  # the connection is dropped either way
            log.debug("closing a llama.cpp stream's response failed", exc_info=True)

    def _finish(self, error: BaseException | None, closed_early: bool) -> None:
        self._state.ended = True
        self._ended_at = time.perf_counter()
        self._closed_early = closed_early
        self._op.finish(self._state, error, closed_early=closed_early)

    async def aclose(self) -> None:
        """Stop reading: the connection closes (the server stops generating) and the span ends."""
        await self._aend(None, closed_early=not self._state.done)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # An abandoned stream still ends its span; its connection is closed on the running loop, if any.
        try:
            if self._state.ended:
                return
            self._finish(None, not self._state.done)
            loop = asyncio.get_running_loop()
        except Exception:
            return
        try:
            task = loop.create_task(self._response.aclose())
            # Held by the client until it ran, so the task is not collected first.
            pending = self._op.client._pending_closes
            pending.add(task)
            task.add_done_callback(pending.discard)
        except Exception:
            pass


# ==================================================================================== clients


def _chat_payload(messages: Sequence[Mapping[str, Any]], *, model: str | None, max_tokens: int | None,
                  temperature: float | None, top_p: float | None, top_k: int | None,
                  stop: str | Sequence[str] | None, seed: int | None, stream: bool, cache_prompt: bool | None,
                  extra: Mapping[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": [dict(m) for m in messages]}
    for key, value in (("model", model), ("max_tokens", max_tokens), ("temperature", temperature),
                       ("top_p", top_p), ("top_k", top_k), ("seed", seed), ("cache_prompt", cache_prompt)):
        if value is not None:
            payload[key] = value
    if stop is not None:
        payload["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if stream:
        payload["stream"] = True
        # Without it a chat stream carries no usage; the exact counts matter more than one extra event.
        payload["stream_options"] = {"include_usage": True}
    payload.update(extra)
    return payload


def _completion_payload(prompt: str | Sequence[int], *, n_predict: int | None, temperature: float | None,
                        top_p: float | None, top_k: int | None, stop: str | Sequence[str] | None, seed: int | None,
                        stream: bool, cache_prompt: bool | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"prompt": prompt if isinstance(prompt, str) else list(prompt)}
    for key, value in (("n_predict", n_predict), ("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                       ("seed", seed), ("cache_prompt", cache_prompt)):
        if value is not None:
            payload[key] = value
    if stop is not None:
        payload["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if stream:
        payload["stream"] = True
    payload.update(extra)
    return payload


class _BaseClient:
    """Settings, URL, payloads and telemetry set-up shared by the sync and async clients."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None, timeout: float | None = 60.0,
                 connect_timeout: float | None = 5.0, retries: int = 2, backoff: float = 0.5,
                 model: str | None = None) -> None:
        owner = type(self).__name__
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(owner, "retries", retries, "an integer >= 0")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValidationError(owner, name, value, "a positive number of seconds, or None for no limit")
        if not isinstance(backoff, (int, float)) or backoff < 0:
            raise ValidationError(owner, "backoff", backoff, "a number of seconds >= 0")
        self._endpoint = _Endpoint.parse(base_url)
        self.base_url = self._endpoint.display_url
        #: The model to ask for (sent as "model"); None lets the server use its own.
        self.model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = float(backoff)
        self._api_key = api_key or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._server_model_id: str | None = None
        self._telemetry_warned = False
        self._pending_closes: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        key = ", api_key=***" if self._api_key else ""
        return f"{type(self).__name__}(base_url={self.base_url!r}{key}, model={self.model!r})"

    @property
    def server_address(self) -> str:
        """The server's host (``server.address``)."""
        return self._endpoint.address

    @property
    def server_port(self) -> int:
        """The server's port (``server.port``)."""
        return self._endpoint.port

    def _httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def _delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2**attempt, _MAX_BACKOFF_S))

    def _transport_error(self, exc: httpx.TransportError, method: str, path: str,
                         timeout: float | None = None) -> LlamaCppError:
        url = self._endpoint.display_url
        if isinstance(exc, httpx.ConnectTimeout):
            return ServerUnavailableError(url, f"no answer within the connect timeout of {self.connect_timeout} s")
        if isinstance(exc, httpx.TimeoutException):
            phase = {httpx.ReadTimeout: "read", httpx.WriteTimeout: "write", httpx.PoolTimeout: "pool"}.get(
                type(exc), "read")
            return ServerTimeoutError(url, method, path, timeout if timeout is not None else self.timeout, phase)
        if isinstance(exc, httpx.ConnectError):
            text = str(exc)
            reason = "connection refused" if "refused" in text.lower() else (text or type(exc).__name__)
            return ServerUnavailableError(url, reason)
        return ServerUnavailableError(url, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    @staticmethod
    def _retryable(exc: httpx.TransportError) -> bool:
        # Only failures before the request reached the server: resending cannot run a generation twice.
        return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))

    def _http_error(self, response: httpx.Response, content: bytes, method: str, path: str) -> LlamaCppError:
        return http_error(response.status_code, content, method=method, path=path,
                          url=self._endpoint.display_url, secret=self._api_key)

    def _decode(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise StreamProtocolError(self._endpoint.display_url, path,
                                      f"the response body is not JSON ({response.text[:60]!r})") from None

    def _telemetry_failed(self, what: str) -> None:
        if not self._telemetry_warned:
            self._telemetry_warned = True
            log.warning("llamatelemetry failed while %s for %s; the call itself is unaffected "
                        "(further failures are logged at debug level)", what, self.base_url, exc_info=True)
        else:
            log.debug("llamatelemetry failed again while %s", what, exc_info=True)

    def _needs_model_id(self, payload: Mapping[str, Any]) -> bool:
        return (not payload.get("model") and not self.model and self._server_model_id is None
                and _telemetry_active())

    def _begin(self, operation: str, payload: Mapping[str, Any], *, stream: bool, mode: _Mode = _Mode.SPAN,
               model: str | None = None, provider: str = PROVIDER) -> _Op:
        """Start a call's telemetry: a span in SPAN mode, only the clock and metric attributes in ENGINE mode."""
        if mode is _Mode.OFF or not _telemetry_active():
            return _Op(self, _Mode.OFF, operation, stream)
        op = _Op(self, mode, operation, stream)
        try:
            self._start_op(op, payload, model or payload.get("model") or self.model or self._server_model_id, provider)
        except Exception:
            self._telemetry_failed("starting a span")
            op.mode = _Mode.OFF
        op.started = time.perf_counter()
        return op

    def _start_op(self, op: _Op, payload: Mapping[str, Any], model: str | None, provider: str) -> None:
        from llamatelemetry.semconv.mapping import request_attributes, span_name, with_compat

        start = request_attributes(None, operation=op.operation, provider=provider, model=model,
                                   server_address=self._endpoint.address, server_port=self._endpoint.port)
        op.metric_attributes = dict(start)
        if op.mode is not _Mode.SPAN:
            return
        from opentelemetry.trace import SpanKind

        from llamatelemetry._runtime import current, get_tracer
        from llamatelemetry.plugins import get_plugin_manager

        span = get_tracer().start_span(span_name(op.operation, start.get(gen_ai.GEN_AI_REQUEST_MODEL)),
                                       kind=SpanKind.CLIENT, attributes=with_compat(start))
        op.span = span
        if span.is_recording():
            span.set_attributes(with_compat(_payload_attributes(payload, op.stream)))
        telemetry = current()
        if telemetry is not None:
            op.capture = telemetry.capture_content
            if op.capture.value != "NO_CONTENT":
                if op.operation == gen_ai.OPERATION_CHAT:
                    op.input_messages = list(payload.get("messages") or [])
                elif isinstance(payload.get("prompt"), str):
                    op.input_messages = [{"role": "user", "content": payload["prompt"]}]
        if op.operation != gen_ai.OPERATION_EMBEDDINGS:
            pm = get_plugin_manager()
            if pm.has_impls("llamatelemetry_request_start") or pm.has_impls("llamatelemetry_request_end"):
                op.hook_request = _hook_request(op.operation, payload, model)
                if op.hook_request is not None:
                    pm.request_start(span, op.hook_request)

    def _remember_model(self, data: Any) -> list[ModelInfo]:
        models = [ModelInfo(id=str(item.get("id")), owned_by=_str(item.get("owned_by")),
                            created=_int(item.get("created")), meta=dict(item.get("meta") or {}), raw=dict(item))
                  for item in (data.get("data") or [] if isinstance(data, Mapping) else [])
                  if isinstance(item, Mapping) and item.get("id")]
        if models:
            self._server_model_id = models[0].id
        return models


class _Chat:
    """``client.chat``: chat completions (``/v1/chat/completions``)."""

    def __init__(self, client: LlamaCppClient) -> None:
        self._client = client

    @overload
    def create(self, *, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = ...,
               temperature: float | None = ..., top_p: float | None = ..., top_k: int | None = ...,
               stop: str | Sequence[str] | None = ..., seed: int | None = ..., stream: Literal[False] = ...,
               cache_prompt: bool | None = ..., model: str | None = ..., **extra: Any) -> ChatCompletion: ...
    @overload
    def create(self, *, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = ...,
               temperature: float | None = ..., top_p: float | None = ..., top_k: int | None = ...,
               stop: str | Sequence[str] | None = ..., seed: int | None = ..., stream: Literal[True],
               cache_prompt: bool | None = ..., model: str | None = ..., **extra: Any) -> Stream: ...

    def create(self, *, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
               stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
               cache_prompt: bool | None = None, model: str | None = None,
               **extra: Any) -> ChatCompletion | Stream:
        """Create a chat completion; ``stream=True`` returns a ``Stream`` of chunks (HTTP errors raise here)."""
        client = self._client
        payload = _chat_payload(messages, model=model or client.model, max_tokens=max_tokens,
                                temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed,
                                stream=stream, cache_prompt=cache_prompt, extra=extra)
        if stream:
            return client._open_stream(gen_ai.OPERATION_CHAT, _CHAT_PATH, payload)
        return client._call(gen_ai.OPERATION_CHAT, _CHAT_PATH, payload, ChatCompletion.from_json, _Outcome.of_chat)


class _Embeddings:
    """``client.embeddings``: ``/v1/embeddings`` (the server must run with ``--embeddings``)."""

    def __init__(self, client: LlamaCppClient) -> None:
        self._client = client

    def create(self, *, input: str | Sequence[str], model: str | None = None, **extra: Any) -> EmbeddingsResponse:
        """Embed one text or several."""
        payload: dict[str, Any] = {"input": input if isinstance(input, str) else list(input), **extra}
        if model or self._client.model:
            payload["model"] = model or self._client.model
        return self._client._call(gen_ai.OPERATION_EMBEDDINGS, _EMBEDDINGS_PATH, payload,
                                  EmbeddingsResponse.from_json, _Outcome.of_embeddings)


class LlamaCppClient(_BaseClient):
    """A client for llama.cpp's HTTP server (``llama-server``, xllamacpp, ...), traced with GenAI spans.

    ``retries`` applies to connection failures and 503 (model loading), with exponential
    ``backoff`` seconds; ``timeout`` bounds each read, ``connect_timeout`` the connection.
    ``model`` is sent as the requested model when given.

    Example::

        client = LlamaCppClient("http://127.0.0.1:8090", api_key=os.environ.get("LLAMA_API_KEY"))
        resp = client.chat.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        print(resp.choices[0].message["content"])
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None, timeout: float | None = 60.0,
                 connect_timeout: float | None = 5.0, retries: int = 2, backoff: float = 0.5,
                 model: str | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout,
                         retries=retries, backoff=backoff, model=model)
        self._http = httpx.Client(base_url=self._endpoint.base_url, headers=self._headers,
                                  timeout=self._httpx_timeout())
        self.chat = _Chat(self)
        self.embeddings = _Embeddings(self)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        self._http.close()

    def __enter__(self) -> LlamaCppClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _send(self, method: str, path: str, payload: Any = None, *, stream: bool = False,
              retries: int | None = None, timeout: float | None = None) -> httpx.Response:
        attempts = self.retries if retries is None else retries
        limit = httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, json=payload, timeout=limit)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if self._retryable(exc) and attempt < attempts:
                    time.sleep(self._delay(attempt))
                    attempt += 1
                    continue
                raise self._transport_error(exc, method, path, timeout) from exc
            if response.status_code < 400:
                return response
            try:
                content = response.read()
            except httpx.HTTPError:
                content = b""
            finally:
                response.close()
            if response.status_code == 503 and attempt < attempts:
                time.sleep(self._delay(attempt))
                attempt += 1
                continue
            raise self._http_error(response, content, method, path)

    def _get_json(self, path: str, *, retries: int | None = None) -> Any:
        return self._decode(self._send("GET", path, retries=retries), path)

    def _post_json(self, path: str, payload: Any) -> Any:
        return self._decode(self._send("POST", path, payload), path)

    # ------------------------------------------------------------------ instrumented calls

    def _model_for(self, payload: Mapping[str, Any]) -> None:
        if self._needs_model_id(payload):
            try:
                self.model_id()
            except LlamaCppError:
                log.debug("could not read the server's model id for the span name", exc_info=True)

    def _call(self, operation: str, path: str, payload: dict[str, Any], parse: Callable[[dict[str, Any]], _R],
              outcome_of: Callable[[_R], _Outcome]) -> _R:
        self._model_for(payload)
        op = self._begin(operation, payload, stream=False)
        try:
            with op.current():
                data = self._post_json(path, payload)
            if not isinstance(data, dict):
                raise StreamProtocolError(self.base_url, path, f"the response is {type(data).__name__}, not an object")
            result = parse(data)
        except BaseException as exc:
            op.finish(None, exc)
            raise
        op.finish(outcome_of(result), None)
        return result

    def _open_stream(self, operation: str, path: str, payload: dict[str, Any], *, mode: _Mode = _Mode.SPAN,
                     model: str | None = None, provider: str = PROVIDER) -> Stream:
        if mode is _Mode.SPAN:
            self._model_for(payload)
        op = self._begin(operation, payload, stream=True, mode=mode, model=model, provider=provider)
        try:
            with op.current():
                response = self._send("POST", path, payload, stream=True)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                response.read()
                response.close()
                raise StreamProtocolError(self.base_url, path, "expected an event stream (text/event-stream), got "
                                                               f"{content_type or 'no content type'}")
        except BaseException as exc:
            op.finish(None, exc)
            raise
        kind: Literal["chat", "completion"] = "chat" if path == _CHAT_PATH else "completion"
        return Stream(response, _StreamState(kind, self.base_url, path, op.keeps_text), op, self.timeout)

    @overload
    def completion(self, prompt: str | Sequence[int], *, n_predict: int | None = ..., temperature: float | None = ...,
                   top_p: float | None = ..., top_k: int | None = ..., stop: str | Sequence[str] | None = ...,
                   seed: int | None = ..., stream: Literal[False] = ..., cache_prompt: bool | None = ...,
                   **extra: Any) -> Completion: ...
    @overload
    def completion(self, prompt: str | Sequence[int], *, n_predict: int | None = ..., temperature: float | None = ...,
                   top_p: float | None = ..., top_k: int | None = ..., stop: str | Sequence[str] | None = ...,
                   seed: int | None = ..., stream: Literal[True], cache_prompt: bool | None = ...,
                   **extra: Any) -> Stream: ...

    def completion(self, prompt: str | Sequence[int], *, n_predict: int | None = None,
                   temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                   stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
                   cache_prompt: bool | None = None, **extra: Any) -> Completion | Stream:
        """Raw text completion with llama.cpp's native ``/completion`` (no chat template)."""
        payload = _completion_payload(prompt, n_predict=n_predict, temperature=temperature, top_p=top_p, top_k=top_k,
                                      stop=stop, seed=seed, stream=stream, cache_prompt=cache_prompt, extra=extra)
        if stream:
            return self._open_stream(gen_ai.OPERATION_TEXT_COMPLETION, _COMPLETION_PATH, payload)
        return self._call(gen_ai.OPERATION_TEXT_COMPLETION, _COMPLETION_PATH, payload, Completion.from_json,
                          _Outcome.of_completion)

    # ------------------------------------------------------------------ plain endpoints (no spans)

    def health(self) -> Health:
        """``/health``; a loading server raises ``ServerLoadingError`` once the retries are spent."""
        data = self._get_json("/health")
        return Health(status=str(data.get("status", "")) if isinstance(data, Mapping) else "", raw=data)

    def models(self) -> list[ModelInfo]:
        """``/v1/models``: the models the server serves."""
        return self._remember_model(self._get_json("/v1/models"))

    def model_id(self) -> str | None:
        """The id of the server's (first) model, read once from ``/v1/models`` and cached."""
        if self._server_model_id is None:
            self._remember_model(self._get_json("/v1/models", retries=0))
        return self._server_model_id

    def props(self) -> dict[str, Any]:
        """``/props``: server settings (fields differ between builds)."""
        data = self._get_json("/props")
        return dict(data) if isinstance(data, Mapping) else {}

    def slots(self) -> list[dict[str, Any]]:
        """``/slots``: one dict per slot (``is_processing``, ``n_ctx``, ...)."""
        data = self._get_json("/slots")
        return [dict(s) for s in data if isinstance(s, Mapping)] if isinstance(data, list) else []

    def metrics_text(self) -> str:
        """``/metrics`` as Prometheus text (the server needs ``--metrics``)."""
        return self._send("GET", "/metrics").text

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` with the server's vocabulary."""
        data = self._post_json("/tokenize", {"content": text, "add_special": add_special})
        return [int(t) for t in data.get("tokens", [])] if isinstance(data, Mapping) else []

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids."""
        data = self._post_json("/detokenize", {"tokens": list(tokens)})
        return str(data.get("content", "")) if isinstance(data, Mapping) else ""


class _AsyncChat:
    """``client.chat`` of the async client."""

    def __init__(self, client: AsyncLlamaCppClient) -> None:
        self._client = client

    @overload
    async def create(self, *, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = ...,
                     temperature: float | None = ..., top_p: float | None = ..., top_k: int | None = ...,
                     stop: str | Sequence[str] | None = ..., seed: int | None = ..., stream: Literal[False] = ...,
                     cache_prompt: bool | None = ..., model: str | None = ..., **extra: Any) -> ChatCompletion: ...
    @overload
    async def create(self, *, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = ...,
                     temperature: float | None = ..., top_p: float | None = ..., top_k: int | None = ...,
                     stop: str | Sequence[str] | None = ..., seed: int | None = ..., stream: Literal[True],
                     cache_prompt: bool | None = ..., model: str | None = ..., **extra: Any) -> AsyncStream: ...

    async def create(self, *, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None,
                     temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                     stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
                     cache_prompt: bool | None = None, model: str | None = None,
                     **extra: Any) -> ChatCompletion | AsyncStream:
        """Create a chat completion; ``stream=True`` returns an ``AsyncStream`` (HTTP errors raise here)."""
        client = self._client
        payload = _chat_payload(messages, model=model or client.model, max_tokens=max_tokens,
                                temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed,
                                stream=stream, cache_prompt=cache_prompt, extra=extra)
        if stream:
            return await client._open_stream(gen_ai.OPERATION_CHAT, _CHAT_PATH, payload)
        result: ChatCompletion = await client._call(gen_ai.OPERATION_CHAT, _CHAT_PATH, payload,
                                                    ChatCompletion.from_json, _Outcome.of_chat)
        return result


class _AsyncEmbeddings:
    """``client.embeddings`` of the async client."""

    def __init__(self, client: AsyncLlamaCppClient) -> None:
        self._client = client

    async def create(self, *, input: str | Sequence[str], model: str | None = None,
                     **extra: Any) -> EmbeddingsResponse:
        """Embed one text or several."""
        payload: dict[str, Any] = {"input": input if isinstance(input, str) else list(input), **extra}
        if model or self._client.model:
            payload["model"] = model or self._client.model
        result: EmbeddingsResponse = await self._client._call(
            gen_ai.OPERATION_EMBEDDINGS, _EMBEDDINGS_PATH, payload, EmbeddingsResponse.from_json,
            _Outcome.of_embeddings)
        return result


class AsyncLlamaCppClient(_BaseClient):
    """The asyncio twin of ``LlamaCppClient``: the same methods, as coroutines; streams are ``AsyncStream``.

    Example::

        async with AsyncLlamaCppClient("http://127.0.0.1:8090") as client:
            stream = await client.chat.create(messages=[{"role": "user", "content": "Hi"}], stream=True)
            async for chunk in stream:
                print(chunk.delta_text, end="")
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None, timeout: float | None = 60.0,
                 connect_timeout: float | None = 5.0, retries: int = 2, backoff: float = 0.5,
                 model: str | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout,
                         retries=retries, backoff=backoff, model=model)
        self._http = httpx.AsyncClient(base_url=self._endpoint.base_url, headers=self._headers,
                                       timeout=self._httpx_timeout())
        self.chat = _AsyncChat(self)
        self.embeddings = _AsyncEmbeddings(self)

    async def aclose(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLlamaCppClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, payload: Any = None, *, stream: bool = False,
                    retries: int | None = None) -> httpx.Response:
        attempts = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, json=payload)
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if self._retryable(exc) and attempt < attempts:
                    await asyncio.sleep(self._delay(attempt))
                    attempt += 1
                    continue
                raise self._transport_error(exc, method, path) from exc
            if response.status_code < 400:
                return response
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            if response.status_code == 503 and attempt < attempts:
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
                continue
            raise self._http_error(response, content, method, path)

    async def _get_json(self, path: str, *, retries: int | None = None) -> Any:
        return self._decode(await self._send("GET", path, retries=retries), path)

    async def _post_json(self, path: str, payload: Any) -> Any:
        return self._decode(await self._send("POST", path, payload), path)

    async def _model_for(self, payload: Mapping[str, Any]) -> None:
        if self._needs_model_id(payload):
            try:
                await self.model_id()
            except LlamaCppError:
                log.debug("could not read the server's model id for the span name", exc_info=True)

    async def _call(self, operation: str, path: str, payload: dict[str, Any], parse: Callable[[dict[str, Any]], _R],
                    outcome_of: Callable[[_R], _Outcome]) -> _R:
        await self._model_for(payload)
        op = self._begin(operation, payload, stream=False)
        try:
            with op.current():
                data = await self._post_json(path, payload)
            if not isinstance(data, dict):
                raise StreamProtocolError(self.base_url, path, f"the response is {type(data).__name__}, not an object")
            result = parse(data)
        except BaseException as exc:
            op.finish(None, exc)
            raise
        op.finish(outcome_of(result), None)
        return result

    async def _open_stream(self, operation: str, path: str, payload: dict[str, Any], *, mode: _Mode = _Mode.SPAN,
                           model: str | None = None, provider: str = PROVIDER) -> AsyncStream:
        if mode is _Mode.SPAN:
            await self._model_for(payload)
        op = self._begin(operation, payload, stream=True, mode=mode, model=model, provider=provider)
        try:
            with op.current():
                response = await self._send("POST", path, payload, stream=True)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                await response.aread()
                await response.aclose()
                raise StreamProtocolError(self.base_url, path, "expected an event stream (text/event-stream), got "
                                                               f"{content_type or 'no content type'}")
        except BaseException as exc:
            op.finish(None, exc)
            raise
        kind: Literal["chat", "completion"] = "chat" if path == _CHAT_PATH else "completion"
        return AsyncStream(response, _StreamState(kind, self.base_url, path, op.keeps_text), op, self.timeout)

    @overload
    async def completion(self, prompt: str | Sequence[int], *, n_predict: int | None = ...,
                         temperature: float | None = ..., top_p: float | None = ..., top_k: int | None = ...,
                         stop: str | Sequence[str] | None = ..., seed: int | None = ...,
                         stream: Literal[False] = ..., cache_prompt: bool | None = ...,
                         **extra: Any) -> Completion: ...
    @overload
    async def completion(self, prompt: str | Sequence[int], *, n_predict: int | None = ...,
                         temperature: float | None = ..., top_p: float | None = ..., top_k: int | None = ...,
                         stop: str | Sequence[str] | None = ..., seed: int | None = ..., stream: Literal[True],
                         cache_prompt: bool | None = ..., **extra: Any) -> AsyncStream: ...

    async def completion(self, prompt: str | Sequence[int], *, n_predict: int | None = None,
                         temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                         stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
                         cache_prompt: bool | None = None, **extra: Any) -> Completion | AsyncStream:
        """Raw text completion with llama.cpp's native ``/completion`` (no chat template)."""
        payload = _completion_payload(prompt, n_predict=n_predict, temperature=temperature, top_p=top_p, top_k=top_k,
                                      stop=stop, seed=seed, stream=stream, cache_prompt=cache_prompt, extra=extra)
        if stream:
            return await self._open_stream(gen_ai.OPERATION_TEXT_COMPLETION, _COMPLETION_PATH, payload)
        result: Completion = await self._call(gen_ai.OPERATION_TEXT_COMPLETION, _COMPLETION_PATH, payload,
                                              Completion.from_json, _Outcome.of_completion)
        return result

    async def health(self) -> Health:
        """``/health``; a loading server raises ``ServerLoadingError`` once the retries are spent."""
        data = await self._get_json("/health")
        return Health(status=str(data.get("status", "")) if isinstance(data, Mapping) else "", raw=data)

    async def models(self) -> list[ModelInfo]:
        """``/v1/models``: the models the server serves."""
        return self._remember_model(await self._get_json("/v1/models"))

    async def model_id(self) -> str | None:
        """The id of the server's (first) model, read once from ``/v1/models`` and cached."""
        if self._server_model_id is None:
            self._remember_model(await self._get_json("/v1/models", retries=0))
        return self._server_model_id

    async def props(self) -> dict[str, Any]:
        """``/props``: server settings (fields differ between builds)."""
        data = await self._get_json("/props")
        return dict(data) if isinstance(data, Mapping) else {}

    async def slots(self) -> list[dict[str, Any]]:
        """``/slots``: one dict per slot (``is_processing``, ``n_ctx``, ...)."""
        data = await self._get_json("/slots")
        return [dict(s) for s in data if isinstance(s, Mapping)] if isinstance(data, list) else []

    async def metrics_text(self) -> str:
        """``/metrics`` as Prometheus text (the server needs ``--metrics``)."""
        return (await self._send("GET", "/metrics")).text

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` with the server's vocabulary."""
        data = await self._post_json("/tokenize", {"content": text, "add_special": add_special})
        return [int(t) for t in data.get("tokens", [])] if isinstance(data, Mapping) else []

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids."""
        data = await self._post_json("/detokenize", {"tokens": list(tokens)})
        return str(data.get("content", "")) if isinstance(data, Mapping) else ""
