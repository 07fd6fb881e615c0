"""How LlamaCppClient fails: each failure is its own error class, with a clear message and an ERROR span.

Real failure sources wherever llama.cpp can produce them: a closed port, the server's own 4xx
answers, a real server caught while it loads its model (503), a real read timeout, a server
started with an API key. Broken event streams cannot be had from a healthy llama.cpp, so a small
``http.server`` stand-in sends them (named as such below).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from http_stand_in import serving

from llamatelemetry import errors as core_errors
from llamatelemetry.semconv import gen_ai
from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("httpx")

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import AsyncLlamaCppClient, LlamaCppClient
from llamatelemetry_llamacpp.errors import (
    AuthenticationError,
    ContextSizeExceededError,
    LlamaCppError,
    LlamaCppHTTPError,
    LlamaCppServerError,
    ServerLoadingError,
    ServerTimeoutError,
    ServerUnavailableError,
    StreamProtocolError,
)

HELLO = [{"role": "user", "content": "Say hello."}]
API_KEY = "sk-llamatelemetry-test-4f1c9a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call_spans(t: InMemoryTelemetry) -> list[Any]:
    """The calls' spans, without a streamed call's prefill/decode phase children."""
    return [s for s in t.spans() if s.name not in (names.SPAN_PREFILL, names.SPAN_DECODE)]


def _error_span(t: InMemoryTelemetry) -> Any:
    (span,) = _call_spans(t)
    assert span.status.status_code.name == "ERROR"
    return span


def _error_type(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


# ----------------------------------------------------------------------------------- a real server while it loads


class LoadingServer:
    """A real llama.cpp server (xllamacpp) with an API key, handed over as soon as its port opens."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc


@pytest.fixture(scope="module")
def keyed_server(smollm2_gguf: Path) -> Iterator[LoadingServer]:
    """llama.cpp listens before its model is loaded and answers 503 meanwhile: the first test here sees that."""
    pytest.importorskip("xllamacpp")
    port = _free_port()
    code = (f"import xllamacpp as x, time; p = x.CommonParams(); p.model.path = {str(smollm2_gguf)!r}; "
            f"p.port = {port}; p.api_keys = [{API_KEY!r}]; p.n_ctx = 256; p.n_parallel = 1; s = x.Server(p); "
            "time.sleep(10**6)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.002)
        else:
            pytest.fail("the llama.cpp server never opened its port")
        yield LoadingServer(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.may_skip("timing: the model may finish loading before the first request sees the 503")
def test_503_while_the_model_loads(keyed_server: LoadingServer, telemetry: InMemoryTelemetry) -> None:
    """While loading, llama.cpp answers 503: ServerLoadingError without retries; retries wait it out."""
    with LlamaCppClient(keyed_server.url, retries=0) as c:
        try:
            c.health()
        except ServerLoadingError as error:
            assert error.status == 503 and error.message == "Loading model"
            assert isinstance(error, LlamaCppServerError) and "retries" in str(error)
        else:
            pytest.skip("the model loaded before the first request could see the 503")
        with pytest.raises(ServerLoadingError):
            c.chat.create(messages=HELLO, max_tokens=2, model="m")
    span = _error_span(telemetry)
    assert span.name == "chat m"
    assert span.attributes[gen_ai.ERROR_TYPE] == _error_type(ServerLoadingError)

    started = time.monotonic()
    with LlamaCppClient(keyed_server.url, api_key=API_KEY, retries=60, backoff=0.05) as c:
        assert c.health().status == "ok"  # retried through the 503s
        assert c.chat.create(messages=HELLO, max_tokens=2).usage is not None
    assert time.monotonic() - started < 30


def test_api_key_is_sent_and_never_recorded(keyed_server: LoadingServer, caplog: pytest.LogCaptureFixture) -> None:
    """The key goes in the Authorization header; spans, logs, reprs and errors never hold it."""
    caplog.set_level(logging.DEBUG)
    with LlamaCppClient(keyed_server.url, retries=60, backoff=0.05) as anonymous:
        anonymous.health()
        with pytest.raises(AuthenticationError) as info:
            anonymous.chat.create(messages=HELLO, max_tokens=2)
    assert info.value.status == 401 and info.value.message == "Invalid API Key"
    assert "api_key" in str(info.value)

    with InMemoryTelemetry(capture_content="SPAN_AND_EVENT") as t, \
            LlamaCppClient(keyed_server.url, api_key=API_KEY) as client:
        client.chat.create(messages=HELLO, max_tokens=2)
        list(client.chat.create(messages=HELLO, max_tokens=2, stream=True))
        with pytest.raises(LlamaCppHTTPError) as bad:
            client.chat.create(messages=[{"role": "user", "content": 5}])
        assert API_KEY not in repr(client)
    with pytest.raises(AuthenticationError) as wrong:
        LlamaCppClient(keyed_server.url, api_key="not-" + API_KEY).tokenize("x")
    recorded = [repr(dict(s.attributes or {})) + repr([(e.name, dict(e.attributes or {})) for e in s.events])
                + str(s.status.description) for s in t.spans()]
    assert len(_call_spans(t)) == 3
    for text in [*recorded, str(bad.value), str(wrong.value), caplog.text]:
        assert API_KEY not in text


# ----------------------------------------------------------------------------------- connection, 4xx, timeout


def test_connection_refused(telemetry: InMemoryTelemetry) -> None:
    """A closed port: ServerUnavailableError naming the URL and how to start a server, after the retries."""
    url = f"http://127.0.0.1:{_free_port()}"
    client = LlamaCppClient(url, retries=2, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError) as info:
        client.chat.create(messages=HELLO, max_tokens=2, model="m")
    assert time.monotonic() - started >= 0.05 + 0.1  # two backoffs
    error = info.value
    assert isinstance(error, ConnectionError) and error.url == url
    assert isinstance(error, core_errors.ServerUnavailableError), "callers catch one class for any server backend"
    assert url in str(error) and "connection refused" in str(error) and "Start it" in str(error)
    span = _error_span(telemetry)
    assert span.attributes[gen_ai.ERROR_TYPE] == _error_type(ServerUnavailableError)
    (point,) = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
    assert point.attributes[gen_ai.ERROR_TYPE] == _error_type(ServerUnavailableError)
    assert telemetry.metric_points(gen_ai.GEN_AI_CLIENT_TOKEN_USAGE) == []
    with pytest.raises(ServerUnavailableError):
        LlamaCppClient(url, retries=0).health()


def test_server_rejects_a_bad_request(llama_server: Any, telemetry: InMemoryTelemetry) -> None:
    """The server's 400 is a LlamaCppHTTPError (not a server error) with its status, message and type."""
    with LlamaCppClient(llama_server.base_url) as client:
        with pytest.raises(LlamaCppHTTPError) as info:
            client.chat.create(messages=[{"role": "user", "content": 5}], max_tokens=2)
        with pytest.raises(LlamaCppHTTPError) as streamed:
            client.chat.create(messages=[{"role": "user", "content": 5}], max_tokens=2, stream=True)
    for error in (info.value, streamed.value):
        assert type(error) is LlamaCppHTTPError and not isinstance(error, LlamaCppServerError)
        assert error.status == 400 and error.error_type == "invalid_request_error"
        assert error.message == "Expected 'content' to be a string or an array"
        assert "HTTP 400" in str(error) and "/v1/chat/completions" in str(error)
    spans = _call_spans(telemetry)
    assert len(spans) == 2 and all(s.status.status_code.name == "ERROR" for s in spans)
    assert {s.attributes[gen_ai.ERROR_TYPE] for s in spans} == {_error_type(LlamaCppHTTPError)}


def test_prompt_longer_than_the_context(llama_server: Any, telemetry: InMemoryTelemetry) -> None:
    """llama.cpp's exceed_context_size_error is ContextSizeExceededError, with the sizes it reported."""
    with LlamaCppClient(llama_server.base_url) as client:
        n_ctx = client.props()["default_generation_settings"]["n_ctx"]
        with pytest.raises(ContextSizeExceededError) as info:
            client.chat.create(messages=[{"role": "user", "content": "hello " * (n_ctx + 50)}], max_tokens=2)
    error = info.value
    assert error.status == 400 and error.n_ctx == n_ctx
    assert error.n_prompt_tokens is not None and error.n_prompt_tokens > n_ctx
    # The core class every backend's overflow is, with the same sizes under its names.
    assert isinstance(error, core_errors.ContextOverflowError)
    assert (error.prompt_tokens, error.n_ctx) == (error.n_prompt_tokens, n_ctx)
    assert "--ctx-size" in str(error)
    assert _error_span(telemetry).attributes[gen_ai.ERROR_TYPE] == _error_type(ContextSizeExceededError)


def test_read_timeout(llama_server: Any, telemetry: InMemoryTelemetry) -> None:
    """A generation slower than timeout= is a ServerTimeoutError (a TimeoutError) naming the limit."""
    with LlamaCppClient(llama_server.base_url, timeout=0.05) as client, \
            pytest.raises(ServerTimeoutError) as info:
        client.chat.create(messages=[{"role": "user", "content": "Write a poem."}], max_tokens=48)
    assert isinstance(info.value, TimeoutError) and "0.05 s" in str(info.value)
    assert isinstance(info.value, core_errors.ServerTimeoutError) and info.value.timeout == 0.05
    assert _error_span(telemetry).attributes[gen_ai.ERROR_TYPE] == _error_type(ServerTimeoutError)
    with LlamaCppClient(llama_server.base_url) as client:  # let the server finish before the next test
        deadline = time.monotonic() + 10
        while any(s.get("is_processing") for s in client.slots()) and time.monotonic() < deadline:
            time.sleep(0.05)


# ----------------------------------------------------------------------------------- broken streams (stand-in)


def _event(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    chunk = {"choices": [{"finish_reason": finish, "index": 0, "delta": delta}], "id": "chatcmpl-standin",
             "model": "/models/standin.gguf", "object": "chat.completion.chunk"}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


_STREAMS: dict[str, bytes] = {
    "bad-json": _event("Hi") + b"data: {not json\n\n",
    "no-done": _event("Hi") + _event(" there") + _event(finish="stop"),
    "error-event": _event("Hi") + b'error: {"code": 500, "message": "slot 0 crashed", "type": "server_error"}\n\n',
    "array": _event("Hi") + b"data: [1, 2]\n\n",
}


class _StandInHandler(BaseHTTPRequestHandler):
    """A stand-in for a broken llama.cpp server: the first path segment picks what it sends."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.endswith("/v1/models"):
            self._send(200, "application/json", b'{"object": "list", "data": [{"id": "/models/standin.gguf"}]}')
        else:
            self._send(404, "application/json", b'{"error": {"code": 404, "message": "File Not Found"}}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        scenario = self.path.strip("/").split("/")[0]
        if scenario == "not-sse":
            self._send(200, "application/json", b'{"ok": true}')
        elif scenario == "cut":
            # Promises more than it sends, then hangs up mid-body.
            head = _event("Hi")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(head) + 1000))
            self.end_headers()
            self.wfile.write(head)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self._send(200, "text/event-stream", _STREAMS[scenario])

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    """The stand-in server's base URL (without a scenario)."""
    with serving(_StandInHandler) as url:
        yield url


@pytest.mark.parametrize(("scenario", "error_class", "fragment", "chunks"), [
    ("bad-json", StreamProtocolError, "is not JSON", 1),
    ("no-done", StreamProtocolError, "ended without the final 'data: [DONE]'", 2),
    ("array", StreamProtocolError, "holds list, not an object", 1),
    ("cut", StreamProtocolError, "connection broke mid-stream", 1),
    ("error-event", LlamaCppServerError, "slot 0 crashed", 1),
])
def test_broken_streams(stand_in: str, telemetry: InMemoryTelemetry, scenario: str,
                        error_class: type[LlamaCppError], fragment: str, chunks: int) -> None:
    """Malformed, truncated or failing event streams raise while iterating and end the span as ERROR."""
    with LlamaCppClient(f"{stand_in}/{scenario}", retries=0) as client:
        stream = client.chat.create(messages=HELLO, max_tokens=4, stream=True)
        received: list[str] = []
        with pytest.raises(error_class) as info:
            for chunk in stream:
                received.append(chunk.delta_text)
    assert fragment in str(info.value)
    assert "".join(received).startswith("Hi") and stream.closed
    span = _error_span(telemetry)
    assert span.name == "chat standin"
    assert span.attributes[gen_ai.ERROR_TYPE] == _error_type(error_class)
    assert span.attributes[names.STREAM_CHUNKS] == chunks
    assert span.attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] >= 0


def test_a_stream_answered_with_plain_json(stand_in: str, telemetry: InMemoryTelemetry) -> None:
    """A stream request answered without text/event-stream fails at create(), not later."""
    with LlamaCppClient(f"{stand_in}/not-sse", retries=0, model="m") as client, \
            pytest.raises(StreamProtocolError, match="expected an event stream"):
        client.chat.create(messages=HELLO, stream=True)
    assert _error_span(telemetry).attributes[gen_ai.ERROR_TYPE] == _error_type(StreamProtocolError)


def test_async_truncated_stream(stand_in: str, telemetry: InMemoryTelemetry) -> None:
    """The async stream reports a missing [DONE] the same way."""

    async def main(fail: Callable[[], Any]) -> None:
        async with AsyncLlamaCppClient(f"{stand_in}/no-done", retries=0) as client:
            stream = await client.chat.create(messages=HELLO, stream=True)
            with fail():
                async for _ in stream:
                    pass

    asyncio.run(main(lambda: pytest.raises(StreamProtocolError, match="ended without")))
    assert _error_span(telemetry).attributes[gen_ai.ERROR_TYPE] == _error_type(StreamProtocolError)


class _RawServer:
    """A raw-socket stand-in for llama.cpp's server (named as such), for what only timing can produce.

    JSON requests get a small chat completion on a kept-alive connection. Streamed requests get a
    short event stream, after which the connection is closed without a ``Connection: close``
    header, as llama.cpp's server does. Requests whose number (from 1, across connections) is in
    ``hang_up`` are read and then answered with nothing but a close; those in ``cut`` get the first
    bytes of their answer, then a close. It notes each request's ``Connection`` header.
    """

    BODY = json.dumps({"id": "chatcmpl-standin", "object": "chat.completion", "model": "/models/standin.gguf",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
    STREAM = _event("Hi") + _event(finish="stop") + b"data: [DONE]\n\n"

    def __init__(self, hang_up: frozenset[int] = frozenset(), cut: frozenset[int] = frozenset()) -> None:
        self.hang_up, self.cut = hang_up, cut
        self.requests = 0
        self.connections = 0
        #: Each request's Connection header (lower case; "" when absent), in arrival order.
        self.connection_headers: list[str] = []
        self._lock = threading.Lock()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as reader:
            while True:
                head = [reader.readline()]
                while head[-1] not in (b"\r\n", b""):
                    head.append(reader.readline())
                if head[-1] == b"":
                    return  # the client closed
                fields = {k.strip().lower(): v.strip() for k, _, v in
                          (line.decode().partition(":") for line in head[1:-1])}
                body = json.loads(reader.read(int(fields.get("content-length", "0"))) or b"{}")
                with self._lock:
                    self.requests += 1
                    number = self.requests
                    self.connection_headers.append(fields.get("connection", "").lower())
                if number in self.hang_up:
                    connection.shutdown(socket.SHUT_RDWR)
                    return
                streamed = bool(body.get("stream"))
                content = self.STREAM if streamed else self.BODY
                answer = (b"HTTP/1.1 200 OK\r\nContent-Type: " + (b"text/event-stream" if streamed else
                                                                   b"application/json")
                          + b"\r\nContent-Length: " + str(len(content)).encode() + b"\r\n\r\n" + content)
                if number in self.cut:
                    connection.sendall(answer[:-len(content) + 10])
                    connection.shutdown(socket.SHUT_RDWR)
                    return
                connection.sendall(answer)
                if streamed:
                    return  # llama.cpp's server closes after a streamed answer, without saying so

    def close(self) -> None:
        self._socket.close()


def test_back_to_back_streams_never_meet_a_closing_connection(telemetry: InMemoryTelemetry) -> None:
    """Streamed requests say Connection: close, so none is sent into a connection the server is closing."""
    server = _RawServer()
    try:
        with LlamaCppClient(server.url, retries=0, model="m") as client:
            for _ in range(3):
                assert client.chat.create(messages=HELLO, max_tokens=4).text == "Hi"
            for _ in range(200):
                with client.chat.create(messages=HELLO, max_tokens=4, stream=True) as stream:
                    assert "".join(c.delta_text for c in stream) == "Hi"

        async def main() -> None:
            async with AsyncLlamaCppClient(server.url, retries=0, model="m") as client:
                for _ in range(100):
                    stream = await client.chat.create(messages=HELLO, max_tokens=4, stream=True)
                    assert "".join([c.delta_text async for c in stream]) == "Hi"

        asyncio.run(main())
    finally:
        server.close()
    assert server.connection_headers[:3] == ["keep-alive"] * 3, "JSON requests keep their connection"
    assert server.connection_headers[3:] == ["close"] * 300
    # The JSON calls' connection carries the first stream; every other stream has its own.
    assert server.requests == 303 and server.connections == 300
    assert all(s.status.is_ok for s in telemetry.spans())


def test_a_server_that_hangs_up_before_answering_is_not_resent(telemetry: InMemoryTelemetry) -> None:
    """The request reached the server (it may have run): ServerUnavailableError, whatever retries says."""
    server = _RawServer(hang_up=frozenset({2}))
    try:
        with LlamaCppClient(server.url, retries=2, model="m") as client:
            client.chat.create(messages=HELLO, max_tokens=4)
            with pytest.raises(ServerUnavailableError, match="RemoteProtocolError"):
                client.chat.create(messages=HELLO, max_tokens=4)
    finally:
        server.close()
    assert server.requests == 2


def test_an_answer_broken_off_is_not_sent_again(telemetry: InMemoryTelemetry) -> None:
    """A connection that broke after the answer began: the request ran, so it is never resent."""
    server = _RawServer(cut=frozenset({1}))
    try:
        with LlamaCppClient(server.url, retries=2, model="m") as client, \
                pytest.raises(ServerUnavailableError, match="RemoteProtocolError"):
            client.chat.create(messages=HELLO, max_tokens=4)
    finally:
        server.close()
    assert server.requests == 1
