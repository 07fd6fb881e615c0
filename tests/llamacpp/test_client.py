"""LlamaCppClient and AsyncLlamaCppClient against llama.cpp's own server (xllamacpp) on SmolLM2."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.plugins import hookimpl
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

pytest.importorskip("httpx")

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import (
    AsyncLlamaCppClient,
    ChatCompletion,
    Completion,
    LlamaCppClient,
    Stream,
    semconv_finish_reason,
)
from llamatelemetry_llamacpp.errors import LlamaCppHTTPError, ServerFeatureDisabledError, ServerUnavailableError

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(llama_server: Any) -> Iterator[LlamaCppClient]:
    """A client of the session's llama.cpp server."""
    with LlamaCppClient(llama_server.base_url) as c:
        yield c


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


def _model_name(llama_server: Any) -> str:
    return Path(llama_server.model_path).stem


def _call_spans(t: InMemoryTelemetry) -> list[Any]:
    """The calls' spans, without a streamed call's prefill/decode phase children."""
    return [s for s in t.spans() if s.name not in (names.SPAN_PREFILL, names.SPAN_DECODE)]


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _histogram_sum(t: InMemoryTelemetry, name: str, **match: Any) -> float:
    return sum(p.point.sum for p in t.metric_points(name)
               if all(p.attributes.get(k) == v for k, v in match.items()))


# ----------------------------------------------------------------------------------- chat


def test_chat_response_shape_span_and_metrics(client: LlamaCppClient, telemetry: InMemoryTelemetry,
                                              llama_server: Any) -> None:
    """A chat call returns the reference shape and is one CLIENT span with the server's usage and timings."""
    resp = client.chat.create(messages=HELLO, max_tokens=4, temperature=0.0, top_k=1, seed=3, stop=["\n\n"])
    assert isinstance(resp, ChatCompletion)
    assert isinstance(resp.choices[0].message["content"], str) and resp.choices[0].message["content"]
    assert resp.choices[0].message["role"] == "assistant"
    assert resp.id and resp.id.startswith("chatcmpl")
    assert resp.model == str(llama_server.model_path)  # llama.cpp's model id is the path it loaded
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    assert resp.usage.prompt_tokens and resp.usage.total_tokens == resp.usage.prompt_tokens + 4
    assert resp.timings is not None and resp.timings.predicted_n == 4

    span = telemetry.span(f"chat {_model_name(llama_server)}")
    attributes = _attrs(span)
    assert span.kind.name == "CLIENT"
    assert span.status.status_code.name == "UNSET"
    host, port = llama_server.base_url.removeprefix("http://").split(":")
    assert attributes[gen_ai.SERVER_ADDRESS] == host and attributes[gen_ai.SERVER_PORT] == int(port)
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    assert attributes[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[gen_ai.GEN_AI_REQUEST_MODEL] == _model_name(llama_server)
    assert attributes[gen_ai.GEN_AI_RESPONSE_MODEL] == _model_name(llama_server)
    assert attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] == 4
    assert attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] == 0.0
    assert attributes[gen_ai.GEN_AI_REQUEST_TOP_K] == 1.0
    assert attributes[gen_ai.GEN_AI_REQUEST_SEED] == 3
    assert attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES] == ("\n\n",)
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == resp.usage.prompt_tokens
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert attributes[gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == resp.timings.cache_n
    assert attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert attributes[gen_ai.GEN_AI_RESPONSE_ID] == resp.id
    assert attributes[names.TIMINGS_PREDICTED_N] == 4
    assert attributes[names.TIMINGS_PROMPT_MS] == resp.timings.prompt_ms
    assert gen_ai.GEN_AI_REQUEST_STREAM not in attributes
    assert gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK not in attributes  # not a stream
    assert gen_ai.GEN_AI_INPUT_MESSAGES not in attributes  # content capture is off by default

    durations = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
    assert [p.value for p in durations] == [1]
    assert durations[0].attributes[gen_ai.GEN_AI_RESPONSE_MODEL] == _model_name(llama_server)
    assert gen_ai.GEN_AI_RESPONSE_ID not in durations[0].attributes
    assert _histogram_sum(telemetry, gen_ai.GEN_AI_CLIENT_TOKEN_USAGE, **{gen_ai.GEN_AI_TOKEN_TYPE: "input"}) \
        == resp.usage.prompt_tokens
    assert _histogram_sum(telemetry, gen_ai.GEN_AI_CLIENT_TOKEN_USAGE, **{gen_ai.GEN_AI_TOKEN_TYPE: "output"}) == 4
    assert telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK) == []


def test_input_tokens_include_the_prompt_cache(client: LlamaCppClient, telemetry: InMemoryTelemetry) -> None:
    """The same prompt twice: the second reads most of it from the cache, and input tokens still count all of it."""
    messages = [{"role": "user", "content": "Name three colours of the rainbow, please."}]
    first = client.chat.create(messages=messages, max_tokens=2, temperature=0.0, cache_prompt=True)
    second = client.chat.create(messages=messages, max_tokens=2, temperature=0.0, cache_prompt=True)
    assert first.usage is not None and second.usage is not None and second.timings is not None
    assert second.timings.cache_n is not None and second.timings.cache_n > 0
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens == second.timings.cache_n + (second.timings.prompt_n or 0)

    span = telemetry.spans()[-1]
    attributes = _attrs(span)
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == second.usage.prompt_tokens
    assert attributes[gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == second.timings.cache_n
    assert attributes[names.TIMINGS_CACHE_N] == second.timings.cache_n


def test_model_argument_is_the_requested_model(llama_server: Any, telemetry: InMemoryTelemetry) -> None:
    """A model asked for names the span; the response model is what the server says it ran."""
    with LlamaCppClient(llama_server.base_url, model="smol-alias") as c:
        c.chat.create(messages=HELLO, max_tokens=1)
    attributes = _attrs(telemetry.span("chat smol-alias"))
    assert attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "smol-alias"
    assert attributes[gen_ai.GEN_AI_RESPONSE_MODEL] == _model_name(llama_server)


# ----------------------------------------------------------------------------------- streaming


def test_stream_measures_time_to_first_chunk_and_every_gap(client: LlamaCppClient, telemetry: InMemoryTelemetry,
                                                           llama_server: Any) -> None:
    """A stream is one span with client-clock TTFT, the chunk count, exact usage and one gap per later chunk."""
    started = time.perf_counter()
    stream = client.chat.create(messages=HELLO, max_tokens=6, temperature=0.0, stream=True)
    assert isinstance(stream, Stream)
    chunks = list(stream)
    elapsed = time.perf_counter() - started
    text = "".join(c.delta_text for c in chunks)
    assert text and all(isinstance(c.raw, dict) for c in chunks)
    content_chunks = sum(1 for c in chunks if c.delta_text)
    assert chunks[-1].raw.get("usage"), "the last event carries the usage (stream_options.include_usage)"

    stats = stream.stats
    assert stream.closed and stats.ended and not stats.closed_early
    assert stats.chunks == content_chunks
    assert stats.time_to_first_chunk is not None and 0 <= stats.time_to_first_chunk <= stats.duration <= elapsed
    assert stats.output_tokens == 6 and stats.finish_reason == "length"

    span = telemetry.span(f"chat {_model_name(llama_server)}")
    attributes = _attrs(span)
    assert attributes[gen_ai.GEN_AI_REQUEST_STREAM] is True
    ttft = attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert ttft == stats.time_to_first_chunk
    assert 0 <= ttft <= (span.end_time - span.start_time) / 1e9
    assert attributes[names.STREAM_CHUNKS] == content_chunks
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 6
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == stats.input_tokens
    assert attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert attributes[names.TIMINGS_PREDICTED_N] == 6
    assert core_names.STREAM_CLOSED_EARLY not in attributes

    ttfc_points = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK)
    assert [p.value for p in ttfc_points] == [1]
    assert ttfc_points[0].point.sum == pytest.approx(ttft)
    gaps = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK)
    assert sum(p.value for p in gaps) == content_chunks - 1


def _wait_until_idle(client: LlamaCppClient, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(slot.get("is_processing") for slot in client.slots()):
            return True
        time.sleep(0.05)
    return False


def test_abandoned_stream_still_ends_its_span(client: LlamaCppClient, telemetry: InMemoryTelemetry,
                                              llama_server: Any) -> None:
    """break + del + gc: the span ends (closed early), and the server stops generating for it."""
    stream = client.chat.create(messages=HELLO, max_tokens=200, temperature=0.0, stream=True)
    for chunk in stream:
        if chunk.delta_text:
            break
    # Still open while the stream lives: only its prefill phase ended, at the first chunk.
    assert [s.name for s in telemetry.spans()] == [names.SPAN_PREFILL]
    del stream, chunk
    gc.collect()

    span = telemetry.span(f"chat {_model_name(llama_server)}")
    attributes = _attrs(span)
    assert attributes[core_names.STREAM_CLOSED_EARLY] is True
    assert attributes[names.STREAM_CHUNKS] == 1
    assert attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] >= 0
    assert span.status.status_code.name == "UNSET"
    assert [p.value for p in telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)] == [1]
    assert _wait_until_idle(client), "the server kept generating for a closed connection"


def test_closing_a_stream_ends_its_span(client: LlamaCppClient, telemetry: InMemoryTelemetry) -> None:
    """Leaving a with-block (or close()) ends the span; iterating afterwards yields nothing."""
    with client.chat.create(messages=HELLO, max_tokens=200, stream=True) as stream:
        next(stream)
    assert stream.closed and stream.stats.closed_early
    assert list(stream) == []
    (span,) = _call_spans(telemetry)
    assert _attrs(span)[core_names.STREAM_CLOSED_EARLY] is True
    assert _wait_until_idle(client)


def test_stream_without_telemetry_still_measures(client: LlamaCppClient) -> None:
    """With telemetry off nothing is recorded, and the stream's own figures are still there."""
    stream = client.chat.create(messages=HELLO, max_tokens=3, temperature=0.0, stream=True)
    assert "".join(c.delta_text for c in stream)
    stats = stream.stats
    assert stats.time_to_first_chunk is not None and stats.output_tokens == 3
    result = stats.to_inference_result("x", request_id="r1")
    assert isinstance(result, InferenceResult) and result.request_id == "r1"
    assert result.ttft_ms is not None and result.total_ms is not None and result.ttft_ms <= result.total_ms


def test_the_server_closes_each_streamed_connection(llama_server: Any) -> None:
    """Why streamed requests say Connection: close (docs/llamacpp-client.md, "Settings").

    llama.cpp's server keeps a connection alive after a JSON answer but closes it after every
    streamed one, so a pool that reuses it before the close arrives fails the next request. If a
    llama.cpp update keeps streamed connections open, this fails: the header (a new connection per
    stream) and the docs' sentence should then be revisited.
    """
    import httpx

    def local_port(response: httpx.Response) -> int:
        return int(response.extensions["network_stream"].get_extra_info("socket").getsockname()[1])

    body = {"messages": HELLO, "max_tokens": 2, "temperature": 0.0}
    with httpx.Client(base_url=llama_server.base_url, timeout=60) as http:
        ports: dict[bool, list[int]] = {False: [], True: []}
        for stream in (False, False, True, True, True):
            with http.stream("POST", "/v1/chat/completions", json={**body, "stream": stream}) as response:
                ports[stream].append(local_port(response))
                response.read()
                time.sleep(0.05)  # the server's close arrives before the next request: no race here
    assert len(set(ports[False])) == 1, "JSON answers keep the connection"
    assert len(set(ports[True])) == 3, "every streamed answer closes it"


# ----------------------------------------------------------------------------------- native completion


def test_native_completion_and_its_stream(client: LlamaCppClient, telemetry: InMemoryTelemetry,
                                          llama_server: Any) -> None:
    """/completion: raw text, llama.cpp's stop_type mapped to semconv, and a stream that ends on "stop": true."""
    done = client.completion("The capital of France is", n_predict=3, temperature=0.0)
    assert isinstance(done, Completion)
    assert done.content and done.tokens_predicted == 3 and done.stop_type == "limit"
    assert done.finish_reason == "length"
    assert done.tokens_evaluated is not None and done.usage.prompt_tokens == done.tokens_evaluated

    stream = client.completion("The capital of France is", n_predict=3, temperature=0.0, stream=True)
    chunks = list(stream)  # llama.cpp sends no [DONE] here: its last event has "stop": true
    assert "".join(c.delta_text for c in chunks) == done.content
    assert chunks[-1].finish_reason == "limit"
    assert stream.stats.output_tokens == 3 and stream.stats.input_tokens == done.tokens_evaluated

    name = f"text_completion {_model_name(llama_server)}"
    first, second = (s for s in telemetry.spans() if s.name == name)
    assert _attrs(first)[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert _attrs(first)[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert _attrs(second)[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == done.tokens_evaluated
    assert _attrs(second)[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] >= 0
    assert second.status.status_code.name == "UNSET"


@pytest.mark.parametrize(("server", "semconv"), [("eos", "stop"), ("word", "stop"), ("stop", "stop"),
                                                 ("limit", "length"), ("length", "length"),
                                                 ("tool_calls", "tool_call"), ("none", None), (None, None)])
def test_finish_reasons_map_to_semconv(server: str | None, semconv: str | None) -> None:
    """llama.cpp's stop types become the semantic-convention finish reasons."""
    assert semconv_finish_reason(server) == semconv


# ----------------------------------------------------------------------------------- async


def test_async_client(llama_server: Any, telemetry: InMemoryTelemetry) -> None:
    """The async twin: a call, two concurrent streams (two slots), an aclose and an abandoned stream: one span each."""

    async def main() -> tuple[ChatCompletion, list[str]]:
        async with AsyncLlamaCppClient(llama_server.base_url) as c:
            resp = await c.chat.create(messages=HELLO, max_tokens=3, temperature=0.0)
            assert (await c.health()).status == "ok"

            async def read(prompt: str) -> str:
                stream = await c.chat.create(messages=[{"role": "user", "content": prompt}], max_tokens=4,
                                             stream=True)
                return "".join([chunk.delta_text async for chunk in stream])

            texts = await asyncio.gather(read("Say hi."), read("Count to three."))
            early = await c.chat.create(messages=HELLO, max_tokens=100, stream=True)
            async for chunk in early:
                if chunk.delta_text:
                    break
            await early.aclose()
            assert early.stats.closed_early
            abandoned = await c.chat.create(messages=HELLO, max_tokens=100, stream=True)
            async for chunk in abandoned:
                if chunk.delta_text:
                    break
            del abandoned, chunk
            gc.collect()  # ends the span; the connection closes on the running loop
            await asyncio.sleep(0.05)
            return resp, list(texts)

    resp, texts = asyncio.run(main())
    assert resp.usage is not None and resp.usage.completion_tokens == 3 and all(texts)
    spans = _call_spans(telemetry)
    assert [s.name for s in spans] == [f"chat {_model_name(llama_server)}"] * 5
    streamed = [_attrs(s) for s in spans if _attrs(s).get(gen_ai.GEN_AI_REQUEST_STREAM)]
    assert len(streamed) == 4
    assert sorted(a.get(core_names.STREAM_CLOSED_EARLY, False) for a in streamed) == [False, False, True, True]
    assert all(a[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] >= 0 for a in streamed)


# ----------------------------------------------------------------------------------- content capture and hooks


def test_content_capture_is_opt_in(llama_server: Any) -> None:
    """With SPAN_ONLY, prompt and completion go on the span as semconv JSON; streams included."""
    with InMemoryTelemetry(capture_content="SPAN_ONLY") as t, LlamaCppClient(llama_server.base_url) as c:
        messages = [{"role": "system", "content": "Be brief."}, *HELLO]
        resp = c.chat.create(messages=messages, max_tokens=3, temperature=0.0)
        streamed = "".join(chunk.delta_text
                           for chunk in c.chat.create(messages=HELLO, max_tokens=3, temperature=0.0, stream=True))
    plain, stream_span = _call_spans(t)
    attributes = _attrs(plain)
    assert json.loads(attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(attributes[gen_ai.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == "Say hello."
    output = json.loads(attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES])[0]
    assert output["parts"][0]["content"] == resp.choices[0].message["content"]
    assert output["finish_reason"] == "length"
    assert json.loads(_attrs(stream_span)[gen_ai.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"] == streamed


def test_request_hooks_run_for_client_calls(llama_server: Any) -> None:
    """The core's request hooks see the call as an InferenceRequest and its result, on the client's span."""
    seen: list[tuple[str, Any, Any]] = []

    class Recorder:
        @hookimpl
        def llamatelemetry_request_start(self, span: Any, request: InferenceRequest) -> None:
            seen.append(("start", span, request))
            span.set_attribute("app.tenant", "t1")

        @hookimpl
        def llamatelemetry_request_end(self, span: Any, request: InferenceRequest, result: InferenceResult | None,
                                       error: BaseException | None) -> None:
            seen.append(("end", result, error))

    with fresh_plugin_manager(Recorder()), InMemoryTelemetry() as t, LlamaCppClient(llama_server.base_url) as c:
        stream = c.chat.create(messages=HELLO, max_tokens=3, temperature=0.0, stream=True)
        text = "".join(chunk.delta_text for chunk in stream)
    (start, _, request), (end, result, error) = seen
    assert start == "start" and end == "end" and error is None
    assert request.messages == HELLO and request.max_tokens == 3 and request.stream
    assert request.sampling.temperature == 0.0
    assert result.text == text and result.output_tokens == 3 and result.ttft_ms is not None
    assert _attrs(_call_spans(t)[0])["app.tenant"] == "t1"


# ----------------------------------------------------------------------------------- embeddings and utilities


def test_embeddings_on_a_chat_server_raise_the_servers_error(client: LlamaCppClient,
                                                             telemetry: InMemoryTelemetry,
                                                             llama_server: Any) -> None:
    """Without --embeddings the server answers 501: a distinct error with its own message, and an ERROR span."""
    with pytest.raises(LlamaCppHTTPError) as info:
        client.embeddings.create(input="hello")
    error = info.value
    assert isinstance(error, ServerFeatureDisabledError)
    assert error.status == 501 and error.error_type == "not_supported_error"
    assert "--embeddings" in error.message and "--embeddings" in str(error)
    span = telemetry.span(f"embeddings {_model_name(llama_server)}")
    assert span.status.status_code.name == "ERROR"
    assert _attrs(span)[gen_ai.ERROR_TYPE] == "llamatelemetry_llamacpp.errors.ServerFeatureDisabledError"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def embedding_server(smollm2_gguf: Path) -> Iterator[str]:
    """A second llama.cpp server with --embeddings (mean pooling), for the embeddings endpoint."""
    pytest.importorskip("xllamacpp")
    port = _free_port()
    code = (f"import xllamacpp as x, time; p = x.CommonParams(); p.model.path = {str(smollm2_gguf)!r}; "
            f"p.port = {port}; p.embedding = True; p.pooling_type = x.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN; "
            "p.n_ctx = 256; p.n_parallel = 1; p.warmup = False; s = x.Server(p); time.sleep(10**6)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with LlamaCppClient(url, retries=100, backoff=0.05, connect_timeout=1.0) as c:
            c.health()  # waits through connection refusals and the 503s of model loading
        yield url
    finally:
        proc.kill()
        proc.wait()


def test_embeddings(embedding_server: str, telemetry: InMemoryTelemetry, smollm2_gguf: Path) -> None:
    """/v1/embeddings: one vector per input, usage as input tokens on an embeddings span."""
    with LlamaCppClient(embedding_server) as c:
        resp = c.embeddings.create(input=["hello", "world"])
    assert [e.index for e in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) == len(resp.data[1].embedding) > 0
    assert resp.usage is not None and resp.usage.prompt_tokens
    attributes = _attrs(telemetry.span(f"embeddings {smollm2_gguf.stem}"))
    assert attributes[gen_ai.GEN_AI_OPERATION_NAME] == "embeddings"
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == resp.usage.prompt_tokens
    assert gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS not in attributes
    assert _histogram_sum(telemetry, gen_ai.GEN_AI_CLIENT_TOKEN_USAGE) == resp.usage.prompt_tokens


def test_tokenize_detokenize_round_trip(client: LlamaCppClient) -> None:
    """Token ids from the server's vocabulary come back to the same text."""
    tokens = client.tokenize("Hello world, telemetry!")
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert client.detokenize(tokens) == "Hello world, telemetry!"


def test_sync_and_async_clients_offer_the_same_calls() -> None:
    """The twins share everything but the send: the same public methods, with the same parameters."""

    def surface(obj: object) -> dict[str, list[tuple[str, Any, Any]]]:
        return {name: [(p.name, p.kind, p.default) for p in inspect.signature(getattr(obj, name)).parameters.values()]
                for name in dir(obj) if not name.startswith("_") and callable(getattr(obj, name))}

    sync_client, async_client = LlamaCppClient(), AsyncLlamaCppClient()
    try:
        sync_methods, async_methods = surface(sync_client), surface(async_client)
        assert sync_methods.pop("close") == async_methods.pop("aclose")
        assert sync_methods == async_methods
        assert surface(sync_client.chat) == surface(async_client.chat)
        assert surface(sync_client.embeddings) == surface(async_client.embeddings)
        for name in ("health", "models", "props", "slots", "metrics_text"):
            assert [p[0] for p in async_methods[name]] == ["timeout", "retries"], name
    finally:
        sync_client.close()
        asyncio.run(async_client.aclose())


def test_per_call_limits_on_both_clients(client: LlamaCppClient, llama_server: Any) -> None:
    """timeout= and retries= on one call work the same on both clients (the metrics bridge scrapes with them)."""

    async def read() -> tuple[list[dict[str, Any]], str]:
        async with AsyncLlamaCppClient(llama_server.base_url) as c:
            return await c.slots(timeout=5.0, retries=0), await c.metrics_text(timeout=5.0, retries=0)

    async_slots, async_text = asyncio.run(read())
    sync_slots = client.slots(timeout=5.0, retries=0)
    assert len(sync_slots) == len(async_slots) == client.props(timeout=5.0)["total_slots"]
    for text in (async_text, client.metrics_text(timeout=5.0, retries=0)):
        assert "# TYPE llamacpp:prompt_tokens_total counter" in text
    closed = LlamaCppClient(f"http://127.0.0.1:{_free_port()}", retries=5, backoff=10.0)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError):
        closed.health(retries=0)  # the call's own retries, not the client's five
    assert time.monotonic() - started < 5.0, "a single retry would have waited its backoff (8 s at most, here)"


def test_server_info_endpoints_make_no_spans(client: LlamaCppClient, telemetry: InMemoryTelemetry,
                                             llama_server: Any) -> None:
    """health, props, slots, models and metrics_text return the server's data and are not GenAI spans."""
    assert client.health().status == "ok"
    props = client.props()
    slots = client.slots()
    assert props["total_slots"] == len(slots) == 2
    assert all("id" in slot and "is_processing" in slot for slot in slots)
    (model,) = client.models()
    assert model.id == str(llama_server.model_path) and model.meta["n_params"] > 0
    assert client.model_id() == model.id
    text = client.metrics_text()
    assert "# TYPE llamacpp:prompt_tokens_total counter" in text
    assert telemetry.spans() == []
