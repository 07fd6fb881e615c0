"""``LlamaCppClient`` and ``AsyncLlamaCppClient``: thin, typed clients for llama.cpp's HTTP server.

Example::

    from llamatelemetry.llama import LlamaCppClient

    with LlamaCppClient("http://127.0.0.1:8090") as client:
        resp = client.chat.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=32)
        print(resp.choices[0].message["content"], resp.usage.prompt_tokens, resp.timings.cache_n)
        for chunk in client.chat.create(messages=[...], max_tokens=32, stream=True):
            print(chunk.delta_text, end="")

Telemetry. Each chat, text-completion and embeddings call is recorded through the core's request
recorder (``llamatelemetry.inference.recording``) as a CLIENT span named
``{gen_ai.operation.name} {model}`` (the model is the one asked for, else the server's own model
id, shown as a name: a ``.gguf`` path becomes its stem) with the GenAI request attributes at
start and the usage, finish reason and response id at the end, plus the ``gen_ai.client.*``
histograms, the request hooks and content capture. ``gen_ai.usage.input_tokens`` is the
server's ``prompt_tokens``, which includes the tokens served from the prompt cache; those are
also ``gen_ai.usage.cache_read.input_tokens`` (``timings.cache_n``). The server's ``timings`` go
on the span as ``llamatelemetry.llama_cpp.timings.*``, beside the client's own clock, never
instead of it.

A stream is one span from the request to its end: it ends when the stream is exhausted, closed,
or abandoned and garbage-collected (then ``llamatelemetry.stream.closed_early`` is true). While
iterating, the client only takes a timestamp per chunk; time to first chunk (the first chunk
that carries generated text) and the gaps between chunks are computed when the stream ends.
Streaming chat requests ask for ``stream_options.include_usage`` so usage is exact.

Through ``LlamaCppServerBackend`` inside an ``InferenceEngine``, the engine's generation is the
request's span; the client then records nothing of its own and only marks its chunks on it
(see ``server_backend``). Nothing is recorded when telemetry is off (no ``init()`` and no
application provider). The API key is sent as ``Authorization: Bearer ...`` and appears in no
span, log or error message.

Every request carries the current trace context through the globally configured propagator
(W3C ``traceparent``/``tracestate`` and ``baggage`` by default): during a recorded call, the
call's span, so a llama.cpp server built with tracing parents its own spans under it.
``propagate=False`` turns that off for one client; ``OTEL_PROPAGATORS=none`` for the whole process.

The pieces live in their own modules: ``records`` (response records), ``payloads`` (request
building), ``transport`` (URL, retries, error mapping, the send), ``sse`` (stream parsing),
``streams`` (``Stream``/``AsyncStream``) and ``telemetry`` (the recorder calls); this module
holds the two clients and re-exports the public names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry_llamacpp.errors import LlamaCppError, StreamProtocolError
from llamatelemetry_llamacpp.payloads import CHAT_PATH, ApiCall, chat_call, completion_call, embeddings_call
from llamatelemetry_llamacpp.records import (
    ChatCompletion,
    Choice,
    Completion,
    Embedding,
    EmbeddingsResponse,
    Health,
    ModelInfo,
    StreamChunk,
    StreamStats,
    Timings,
    Usage,
    as_int,
    as_str,
)
from llamatelemetry_llamacpp.semconv import semconv_finish_reason, served_model_attributes
from llamatelemetry_llamacpp.sse import Outcome, StreamParser
from llamatelemetry_llamacpp.streams import AsyncStream, Stream
from llamatelemetry_llamacpp.telemetry import CallRecording
from llamatelemetry_llamacpp.transport import DEFAULT_BASE_URL, AsyncTransport, HttpRequest, SyncTransport, Transport

if TYPE_CHECKING:
    import httpx

    from llamatelemetry.inference.recording import Generation

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
_T = TypeVar("_T", bound=Transport)


class _ClientBase(Generic[_T]):
    """Everything the sync and async clients share: settings, the recording of calls, and reading answers."""

    def __init__(self, transport: _T, model: str | None) -> None:
        self._transport = transport
        #: The model to ask for (sent as "model"); None lets the server use its own.
        self.model = model
        self._server_model_id: str | None = None
        #: Span attributes for the server's model (GGUF file type, size, ...), once /v1/models was read.
        self._server_model_attributes: dict[str, Any] = {}

    def __repr__(self) -> str:
        key = ", api_key=***" if self._transport.api_key else ""
        return f"{type(self).__name__}(base_url={self.base_url!r}{key}, model={self.model!r})"

    @property
    def base_url(self) -> str:
        """The server's URL, without any credentials it held."""
        return self._transport.endpoint.display_url

    @property
    def timeout(self) -> float | None:
        """Seconds each read may take (``None``: no limit)."""
        return self._transport.timeout

    @property
    def connect_timeout(self) -> float | None:
        """Seconds the connection may take (``None``: no limit)."""
        return self._transport.connect_timeout

    @property
    def propagate(self) -> bool:
        """Whether requests carry the current trace context (``traceparent``, ``tracestate``, ``baggage``)."""
        return self._transport.propagate

    @property
    def retries(self) -> int:
        """Retries after a connection failure or a 503 (model loading)."""
        return self._transport.retries

    @property
    def backoff(self) -> float:
        """The first retry's wait in seconds (doubling each time, at most 8 s)."""
        return self._transport.backoff

    @property
    def server_address(self) -> str:
        """The server's host (``server.address``)."""
        return self._transport.endpoint.address

    @property
    def server_port(self) -> int:
        """The server's port (``server.port``)."""
        return self._transport.endpoint.port

    # ------------------------------------------------------------------ shared steps of a call

    def _needs_model_id(self, call: ApiCall) -> bool:
        # The span is named after the model: ask /v1/models once when nobody named one.
        return not call.model and not self.model and self._server_model_id is None and telemetry_active()

    def _record(self, call: ApiCall, within: Generation | None = None) -> CallRecording:
        if within is not None:
            return CallRecording.within(within)
        return CallRecording.start(call, self._transport.endpoint, call.model or self.model or self._server_model_id,
                                   self._server_model_attributes)

    @staticmethod
    def _post(call: ApiCall) -> HttpRequest:
        return HttpRequest("POST", call.path, call.payload, stream=call.stream)

    @staticmethod
    def _get(path: str, timeout: float | None = None, retries: int | None = None) -> HttpRequest:
        return HttpRequest("GET", path, timeout=timeout, retries=retries)

    def _parse(self, call: ApiCall, response: httpx.Response, parse: Callable[[dict[str, Any]], _R]) -> _R:
        data = self._transport.decode(response, call.path)
        if not isinstance(data, dict):
            raise StreamProtocolError(self.base_url, call.path, f"the response is {type(data).__name__}, not an object")
        return parse(data)

    def _parser(self, call: ApiCall, recording: CallRecording) -> StreamParser:
        kind: Literal["chat", "completion"] = "chat" if call.path == CHAT_PATH else "completion"
        return StreamParser(kind, self.base_url, call.path, recording.keeps_text)

    def _remember_model(self, data: Any) -> list[ModelInfo]:
        models = [ModelInfo(id=str(item.get("id")), owned_by=as_str(item.get("owned_by")),
                            created=as_int(item.get("created")), meta=dict(item.get("meta") or {}), raw=dict(item))
                  for item in (data.get("data") or [] if isinstance(data, Mapping) else [])
                  if isinstance(item, Mapping) and item.get("id")]
        if models:
            self._server_model_id = models[0].id
            self._server_model_attributes = served_model_attributes(models[0].meta)
        return models

    @staticmethod
    def _health_of(data: Any) -> Health:
        return Health(status=str(data.get("status", "")) if isinstance(data, Mapping) else "", raw=data)

    @staticmethod
    def _dict_of(data: Any) -> dict[str, Any]:
        return dict(data) if isinstance(data, Mapping) else {}

    @staticmethod
    def _slots_of(data: Any) -> list[dict[str, Any]]:
        return [dict(s) for s in data if isinstance(s, Mapping)] if isinstance(data, list) else []

    @staticmethod
    def _tokens_of(data: Any) -> list[int]:
        return [int(t) for t in data.get("tokens", [])] if isinstance(data, Mapping) else []

    @staticmethod
    def _text_of(data: Any) -> str:
        return str(data.get("content", "")) if isinstance(data, Mapping) else ""


# ==================================================================================== sync


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
        call = chat_call(messages, model=model or client.model, max_tokens=max_tokens, temperature=temperature,
                         top_p=top_p, top_k=top_k, stop=stop, seed=seed, stream=stream, cache_prompt=cache_prompt,
                         extra=extra)
        if stream:
            return client._open_stream(call)
        return client._call(call, ChatCompletion.from_json, Outcome.of_chat)


class _Embeddings:
    """``client.embeddings``: ``/v1/embeddings`` (the server must run with ``--embeddings``)."""

    def __init__(self, client: LlamaCppClient) -> None:
        self._client = client

    def create(self, *, input: str | Sequence[str], model: str | None = None, **extra: Any) -> EmbeddingsResponse:
        """Embed one text or several."""
        call = embeddings_call(input, model=model or self._client.model, extra=extra)
        return self._client._call(call, EmbeddingsResponse.from_json, Outcome.of_embeddings)


class LlamaCppClient(_ClientBase[SyncTransport]):
    """A client for llama.cpp's HTTP server (``llama-server``, xllamacpp, ...), traced with GenAI spans.

    ``retries`` applies to connection failures and 503 (model loading), with exponential
    ``backoff`` seconds; ``timeout`` bounds each read, ``connect_timeout`` the connection.
    ``model`` is sent as the requested model when given. ``propagate=False`` sends no trace
    context headers (``traceparent``, ...), which are otherwise sent with every request.

    Example::

        client = LlamaCppClient("http://127.0.0.1:8090", api_key=os.environ.get("LLAMA_API_KEY"))
        resp = client.chat.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        print(resp.choices[0].message["content"])
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None, timeout: float | None = 60.0,
                 connect_timeout: float | None = 5.0, retries: int = 2, backoff: float = 0.5,
                 model: str | None = None, propagate: bool = True) -> None:
        super().__init__(SyncTransport(type(self).__name__, base_url, api_key=api_key, timeout=timeout,
                                       connect_timeout=connect_timeout, retries=retries, backoff=backoff,
                                       propagate=propagate), model)
        self.chat = _Chat(self)
        self.embeddings = _Embeddings(self)

    def close(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        self._transport.close()

    def __enter__(self) -> LlamaCppClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ recorded calls

    def _learn_model_id(self, call: ApiCall) -> None:
        if self._needs_model_id(call):
            try:
                self.model_id()
            except LlamaCppError:
                log.debug("could not read the server's model id for the span name", exc_info=True)

    def _call(self, call: ApiCall, parse: Callable[[dict[str, Any]], _R], outcome_of: Callable[[_R], Outcome]) -> _R:
        self._learn_model_id(call)
        recording = self._record(call)
        with recording.generation:  # current for the send; fails on any error
            result = self._parse(call, self._transport.send(self._post(call)), parse)
            recording.end(outcome_of(result), None)
        return result

    def _open_stream(self, call: ApiCall, *, within: Generation | None = None) -> Stream:
        """Send a streaming ``call``; ``within``: mark its chunks on that (an engine's) generation instead."""
        if within is None:
            self._learn_model_id(call)
        recording = self._record(call, within)
        with recording.failing_on_error():
            with recording.current():
                response = self._transport.send(self._post(call))
            error = self._transport.not_an_event_stream(response, call.path)
            if error is not None:
                response.read()
                response.close()
                raise error
        return Stream(response, self._parser(call, recording), recording, self._transport)

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
        call = completion_call(prompt, n_predict=n_predict, temperature=temperature, top_p=top_p, top_k=top_k,
                               stop=stop, seed=seed, stream=stream, cache_prompt=cache_prompt, extra=extra)
        if stream:
            return self._open_stream(call)
        return self._call(call, Completion.from_json, Outcome.of_completion)

    # ------------------------------------------------------------------ plain endpoints (not recorded)

    def _get_json(self, path: str, timeout: float | None = None, retries: int | None = None) -> Any:
        return self._transport.decode(self._transport.send(self._get(path, timeout, retries)), path)

    def _post_json(self, path: str, payload: Any) -> Any:
        return self._transport.decode(self._transport.send(HttpRequest("POST", path, payload)), path)

    def health(self, *, timeout: float | None = None, retries: int | None = None) -> Health:
        """``/health``; a loading server raises ``ServerLoadingError`` once the retries are spent."""
        return self._health_of(self._get_json("/health", timeout, retries))

    def models(self, *, timeout: float | None = None, retries: int | None = None) -> list[ModelInfo]:
        """``/v1/models``: the models the server serves."""
        return self._remember_model(self._get_json("/v1/models", timeout, retries))

    def model_id(self) -> str | None:
        """The id of the server's (first) model, read once from ``/v1/models`` and cached."""
        if self._server_model_id is None:
            self._remember_model(self._get_json("/v1/models", retries=0))
        return self._server_model_id

    def props(self, *, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """``/props``: server settings (fields differ between builds)."""
        return self._dict_of(self._get_json("/props", timeout, retries))

    def slots(self, *, timeout: float | None = None, retries: int | None = None) -> list[dict[str, Any]]:
        """``/slots``: one dict per slot (``is_processing``, ``n_ctx``, ...)."""
        return self._slots_of(self._get_json("/slots", timeout, retries))

    def metrics_text(self, *, timeout: float | None = None, retries: int | None = None) -> str:
        """``/metrics`` as Prometheus text (the server needs ``--metrics``)."""
        return self._transport.send(self._get("/metrics", timeout, retries)).text

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` with the server's vocabulary."""
        return self._tokens_of(self._post_json("/tokenize", {"content": text, "add_special": add_special}))

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids."""
        return self._text_of(self._post_json("/detokenize", {"tokens": list(tokens)}))


# ==================================================================================== async


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
        call = chat_call(messages, model=model or client.model, max_tokens=max_tokens, temperature=temperature,
                         top_p=top_p, top_k=top_k, stop=stop, seed=seed, stream=stream, cache_prompt=cache_prompt,
                         extra=extra)
        if stream:
            return await client._open_stream(call)
        return await client._call(call, ChatCompletion.from_json, Outcome.of_chat)


class _AsyncEmbeddings:
    """``client.embeddings`` of the async client."""

    def __init__(self, client: AsyncLlamaCppClient) -> None:
        self._client = client

    async def create(self, *, input: str | Sequence[str], model: str | None = None,
                     **extra: Any) -> EmbeddingsResponse:
        """Embed one text or several."""
        call = embeddings_call(input, model=model or self._client.model, extra=extra)
        return await self._client._call(call, EmbeddingsResponse.from_json, Outcome.of_embeddings)


class AsyncLlamaCppClient(_ClientBase[AsyncTransport]):
    """The asyncio twin of ``LlamaCppClient``: the same methods, as coroutines; streams are ``AsyncStream``.

    Example::

        async with AsyncLlamaCppClient("http://127.0.0.1:8090") as client:
            stream = await client.chat.create(messages=[{"role": "user", "content": "Hi"}], stream=True)
            async for chunk in stream:
                print(chunk.delta_text, end="")
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None, timeout: float | None = 60.0,
                 connect_timeout: float | None = 5.0, retries: int = 2, backoff: float = 0.5,
                 model: str | None = None, propagate: bool = True) -> None:
        super().__init__(AsyncTransport(type(self).__name__, base_url, api_key=api_key, timeout=timeout,
                                        connect_timeout=connect_timeout, retries=retries, backoff=backoff,
                                        propagate=propagate), model)
        self.chat = _AsyncChat(self)
        self.embeddings = _AsyncEmbeddings(self)
        #: Connection closes of abandoned streams, held until they ran.
        self._pending_closes: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncLlamaCppClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ recorded calls

    async def _learn_model_id(self, call: ApiCall) -> None:
        if self._needs_model_id(call):
            try:
                await self.model_id()
            except LlamaCppError:
                log.debug("could not read the server's model id for the span name", exc_info=True)

    async def _call(self, call: ApiCall, parse: Callable[[dict[str, Any]], _R],
                    outcome_of: Callable[[_R], Outcome]) -> _R:
        await self._learn_model_id(call)
        recording = self._record(call)
        with recording.generation:  # current for the send; fails on any error
            result = self._parse(call, await self._transport.send(self._post(call)), parse)
            recording.end(outcome_of(result), None)
        return result

    async def _open_stream(self, call: ApiCall, *, within: Generation | None = None) -> AsyncStream:
        """Send a streaming ``call``; ``within``: mark its chunks on that (an engine's) generation instead."""
        if within is None:
            await self._learn_model_id(call)
        recording = self._record(call, within)
        with recording.failing_on_error():
            with recording.current():
                response = await self._transport.send(self._post(call))
            error = self._transport.not_an_event_stream(response, call.path)
            if error is not None:
                await response.aread()
                await response.aclose()
                raise error
        return AsyncStream(response, self._parser(call, recording), recording, self._transport, self._pending_closes)

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
        call = completion_call(prompt, n_predict=n_predict, temperature=temperature, top_p=top_p, top_k=top_k,
                               stop=stop, seed=seed, stream=stream, cache_prompt=cache_prompt, extra=extra)
        if stream:
            return await self._open_stream(call)
        return await self._call(call, Completion.from_json, Outcome.of_completion)

    # ------------------------------------------------------------------ plain endpoints (not recorded)

    async def _get_json(self, path: str, timeout: float | None = None, retries: int | None = None) -> Any:
        return self._transport.decode(await self._transport.send(self._get(path, timeout, retries)), path)

    async def _post_json(self, path: str, payload: Any) -> Any:
        return self._transport.decode(await self._transport.send(HttpRequest("POST", path, payload)), path)

    async def health(self, *, timeout: float | None = None, retries: int | None = None) -> Health:
        """``/health``; a loading server raises ``ServerLoadingError`` once the retries are spent."""
        return self._health_of(await self._get_json("/health", timeout, retries))

    async def models(self, *, timeout: float | None = None, retries: int | None = None) -> list[ModelInfo]:
        """``/v1/models``: the models the server serves."""
        return self._remember_model(await self._get_json("/v1/models", timeout, retries))

    async def model_id(self) -> str | None:
        """The id of the server's (first) model, read once from ``/v1/models`` and cached."""
        if self._server_model_id is None:
            self._remember_model(await self._get_json("/v1/models", retries=0))
        return self._server_model_id

    async def props(self, *, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """``/props``: server settings (fields differ between builds)."""
        return self._dict_of(await self._get_json("/props", timeout, retries))

    async def slots(self, *, timeout: float | None = None, retries: int | None = None) -> list[dict[str, Any]]:
        """``/slots``: one dict per slot (``is_processing``, ``n_ctx``, ...)."""
        return self._slots_of(await self._get_json("/slots", timeout, retries))

    async def metrics_text(self, *, timeout: float | None = None, retries: int | None = None) -> str:
        """``/metrics`` as Prometheus text (the server needs ``--metrics``)."""
        return (await self._transport.send(self._get("/metrics", timeout, retries))).text

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` with the server's vocabulary."""
        return self._tokens_of(await self._post_json("/tokenize", {"content": text, "add_special": add_special}))

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids."""
        return self._text_of(await self._post_json("/detokenize", {"tokens": list(tokens)}))
