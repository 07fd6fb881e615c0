"""``LlamaCppServerBackend``: the ``LLMBackend`` over a running llama.cpp server (CLIENT spans).

Example::

    engine = create_engine("llama.cpp", llama_server_url="http://127.0.0.1:8090")
    with engine:
        result = engine.generate(InferenceRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=32))
        print(result.text, result.ttft_ms, result.cached_input_tokens)

Who records what. The core's ``InferenceEngine`` records the request as a generation (span
``chat {model}``, kind CLIENT since this backend says ``span_kind = "client"``; the request
hooks; the GenAI metrics) through the core's request recorder. The backend's client records
nothing of its own (one request, one span): it streams with its own telemetry off and marks
each chunk that carried output on the engine's generation (``current_generation()``), which
then records ``gen_ai.response.time_to_first_chunk``, ``llamatelemetry.stream.chunks`` and the
streaming histograms. The result carries the server's ``timings`` in
``InferenceResult.attributes`` (outside an engine, the stream's own figures too); its times
count from the generation's start, so the result's TTFT and the span's are the same figure.
Called without an engine, the backend records nothing; use ``LlamaCppClient`` directly for
traced calls outside an engine.

Generation always streams, whatever ``request.stream`` says, so time to first token is measured
on the client's clock from the first chunk carrying text; the server's ``timings`` give the
prefill and decode speeds beside it. So under an engine every request span gets the real-time
phase children a streamed client call gets: the backend opens them on the engine's generation as
it sends (``Generation.start_phases()``), ``llama_cpp.prefill`` ends as the first output chunk
arrives and ``llama_cpp.decode`` when the engine ends the generation, with the server's generation
timings on it (never as back-dated times).

``start()`` also reads ``/v1/models`` once: the served model's GGUF facts (file type such as
``Q4_K_M``, size, parameters; ``semconv.served_model_attributes``) become ``span_attributes``,
which the engine puts on every request span. A server that does not say (no ``meta``, no
``/v1/models``) starts all the same, with spans that go without them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from llamatelemetry.errors import BackendNotStartedError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.inference.recording import current_generation
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.mapping import model_display_name
from llamatelemetry_llamacpp.client import LlamaCppClient
from llamatelemetry_llamacpp.errors import AuthenticationError, LlamaCppHTTPError, StreamProtocolError
from llamatelemetry_llamacpp.payloads import chat_call, completion_call
from llamatelemetry_llamacpp.semconv import served_model_attributes
from llamatelemetry_llamacpp.telemetry import _DECODE_TIMINGS
from llamatelemetry_llamacpp.transport import DEFAULT_BASE_URL, Endpoint

if TYPE_CHECKING:
    from llamatelemetry.inference.types import CudaInferenceConfig

__all__ = ["LlamaCppServerBackend"]

log = logging.getLogger("llamatelemetry.llama_cpp")


class LlamaCppServerBackend:
    """An ``LLMBackend`` that sends each request to a running llama.cpp server and streams the answer.

    ``llama_server_url`` defaults to ``http://127.0.0.1:8090``. ``config`` is kept for reference
    only: a running server already has its GPU settings (``ServerManager`` applies them when it
    starts one). ``model`` is sent as the requested model; without it the span is named after
    the server's own model. ``cache_prompt`` (None: the server's default, on) can switch the
    prompt cache off for cold measurements. Other keyword arguments go to ``LlamaCppClient``
    (``timeout``, ``connect_timeout``, ``retries``, ``backoff``).
    """

    provider_name = gen_ai.PROVIDER_LLAMA_CPP
    span_kind: Literal["client"] = "client"

    def __init__(self, llama_server_url: str | None = None, config: CudaInferenceConfig | None = None, *,
                 api_key: str | None = None, model: str | None = None, cache_prompt: bool | None = None,
                 **client_options: Any) -> None:
        self._url = llama_server_url or DEFAULT_BASE_URL
        endpoint = Endpoint.parse(self._url, type(self).__name__)  # a malformed URL fails here, not at start()
        #: The server's URL (without any credentials it held).
        self.url = endpoint.display_url
        self.config = config
        self.cache_prompt = cache_prompt
        #: ``server.address`` / ``server.port`` of the engine's spans.
        self.server_address: str = endpoint.address
        self.server_port: int = endpoint.port
        self._requested_model = model
        #: ``gen_ai.request.model`` of the engine's spans: the model asked for, else the server's (after start).
        self.model_name: str | None = model_display_name(model)
        #: Attributes for every request span: the served model's GGUF facts, read from ``/v1/models`` at start().
        self.span_attributes: Mapping[str, Any] = {}
        self._api_key = api_key
        self._client_options = client_options
        self._client: LlamaCppClient | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Check ``/health`` (waiting through model loading as the retries allow); learn the model's name and facts."""
        with self._lock:
            if self._client is not None:
                return
            client = LlamaCppClient(self._url, api_key=self._api_key, model=self._requested_model,
                                    **self._client_options)
            try:
                client.health()
                self._learn_model(client)
            except BaseException:
                client.close()
                raise
            self._client = client

    def _learn_model(self, client: LlamaCppClient) -> None:
        """Read ``/v1/models`` once: the model's name (when none was asked for) and its facts for every span."""
        try:
            models = client.models(retries=0)
        except AuthenticationError:
            raise  # a wrong key fails every request too: say so now
        except (LlamaCppHTTPError, StreamProtocolError) as exc:
            # Another build may lack it or answer oddly: requests still work, and spans go without the facts.
            said = f"HTTP {exc.status}: {exc.message}" if isinstance(exc, LlamaCppHTTPError) else str(exc)
            log.warning("The server at %s did not list its model (GET /v1/models: %s); spans go without the "
                        "model's facts.", self.url, said)
            return
        if self._requested_model is None:
            served = models[0] if models else None
            if served is not None:
                self.model_name = model_display_name(served.id)
        else:
            # Facts only of the model asked for: a router serving several must not lend another's.
            served = next((m for m in models if m.id == self._requested_model), None)
        self.span_attributes = served_model_attributes(served.meta) if served is not None else {}

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Stream ``request`` through the server and report what the client measured and the server said."""
        client = self._client
        if client is None:
            raise BackendNotStartedError("LlamaCppServerBackend is not started: call start() (or use the engine "
                                         "in a with-block) before generate().")
        sampling = request.sampling
        extra: dict[str, Any] = {"repeat_penalty": sampling.repeat_penalty}
        if sampling.frequency_penalty:
            extra["frequency_penalty"] = sampling.frequency_penalty
        if sampling.presence_penalty:
            extra["presence_penalty"] = sampling.presence_penalty
        stop = list(sampling.stop) or None
        if request.operation == gen_ai.OPERATION_TEXT_COMPLETION:
            call = completion_call(request.prompt_text, n_predict=request.max_tokens,
                                   temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                   stop=stop, seed=sampling.seed, stream=True, cache_prompt=self.cache_prompt,
                                   extra=extra)
        else:
            call = chat_call(request.messages, model=request.model or self._requested_model,
                             max_tokens=request.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                             top_k=sampling.top_k, stop=stop, seed=sampling.seed, stream=True,
                             cache_prompt=self.cache_prompt, extra=extra)
        # This backend always streams: its chunks, marked on the engine's generation, give the span its
        # stream figures whatever request.stream says.
        generation = current_generation()
        # The request goes out now: the engine's generation gets its prefill phase span (send -> first chunk).
        generation.start_phases()
        stream = client._open_stream(call, within=generation)
        parts: list[str] = []
        with stream:
            for chunk in stream:
                if chunk.delta_text:
                    parts.append(chunk.delta_text)
        stats = stream.stats
        # The recorder puts the stream's own attributes on the engine's span from the chunk marks.
        timings = stats.timings.attributes() if stats.timings is not None else {}
        # The server's generation timings beside the decode phase, which the engine ends.
        generation.set_phase_attributes({key: value for key, value in timings.items() if key in _DECODE_TIMINGS})
        return stats.to_inference_result("".join(parts), request.request_id,
                                         attributes=timings if generation.active else None)

    def shutdown(self) -> None:
        """Close the connections (the server keeps running); calling it twice is harmless."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        state = "started" if self._client is not None else "stopped"
        return f"<LlamaCppServerBackend {self.url} model={self.model_name!r} {state}>"
