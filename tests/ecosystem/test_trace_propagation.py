"""W3C trace context into the server: every request of the llama.cpp client and bench driver carries traceparent.

llama.cpp's server cannot echo the headers it received, so the receiving end here is
``HeaderRecordingServer``: a fake OpenAI-compatible endpoint (a real ``http.server`` on a real
socket) that answers like llama.cpp and records every request's headers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("httpx")

from opentelemetry import baggage, context, trace
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import AsyncLlamaCppClient, LlamaCppClient

HELLO = [{"role": "user", "content": "Hi"}]
_TIMINGS = {"prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 2, "predicted_ms": 2.0, "cache_n": 0}


class _FakeLlamaHandler(BaseHTTPRequestHandler):
    """Answers the routes the client and the bench driver use, like llama.cpp does, and records headers."""

    server: HeaderRecordingServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.server.received.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        return body if isinstance(body, dict) else {}

    def _json(self, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _events(self, events: list[str]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {event}\n\n".encode())
        self.wfile.flush()

    def do_GET(self) -> None:
        self._record()
        if self.path == "/health":
            self._json({"status": "ok"})
        elif self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        elif self.path == "/props":
            self._json({"total_slots": 1})
        else:
            self._json({"error": {"code": 404, "message": "not found", "type": "not_found_error"}}, 404)

    def do_POST(self) -> None:
        body = self._record()
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if self.path == "/v1/chat/completions" and body.get("stream"):
            chunk = {"id": "chatcmpl-1", "model": "fake-model", "object": "chat.completion.chunk"}
            self._events([
                json.dumps({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
                json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
                json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}),
                json.dumps({**chunk, "choices": [], "usage": usage, "timings": _TIMINGS}),
                "[DONE]",
            ])
        elif self.path == "/v1/chat/completions":
            self._json({"id": "chatcmpl-2", "model": "fake-model", "object": "chat.completion", "usage": usage,
                        "timings": _TIMINGS, "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": "Hello"}}]})
        elif self.path == "/v1/embeddings":
            self._json({"model": "fake-model", "object": "list", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                        "data": [{"index": 0, "object": "embedding", "embedding": [0.1, 0.2]}]})
        elif self.path == "/completion":
            self._events([json.dumps({"content": "One", "stop": False}),
                          json.dumps({"content": "", "stop": True, "stop_type": "limit", "model": "fake-model",
                                      "tokens_evaluated": 3, "tokens_predicted": 1, "timings": _TIMINGS})])
        else:
            self._json({"error": {"code": 404, "message": "not found", "type": "not_found_error"}}, 404)


class HeaderRecordingServer(ThreadingHTTPServer):
    """A fake OpenAI-compatible endpoint that records each request's (method, path, headers)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeLlamaHandler)
        self.received: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def posts(self, path: str) -> list[dict[str, str]]:
        return [headers for method, p, headers in self.received if method == "POST" and p == path]


@pytest.fixture
def fake_server() -> Iterator[HeaderRecordingServer]:
    """The header-recording fake endpoint, served from a thread."""
    server = HeaderRecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


def _traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _call_spans(t: InMemoryTelemetry, prefix: str) -> list[Any]:
    return [s for s in t.spans() if s.name.startswith(prefix)]


def test_every_recorded_call_carries_its_span_as_traceparent(fake_server: HeaderRecordingServer,
                                                              telemetry: InMemoryTelemetry) -> None:
    """Sync and async, whole and streamed chat, /completion streams and embeddings: the header is the call's span."""
    with LlamaCppClient(fake_server.url, model="fake-model") as client:
        client.chat.create(messages=HELLO, max_tokens=2)
        list(client.chat.create(messages=HELLO, max_tokens=2, stream=True))
        list(client.completion("One", n_predict=1, stream=True))
        client.embeddings.create(input="x")

    async def run() -> None:
        async with AsyncLlamaCppClient(fake_server.url, model="fake-model") as client:
            await client.chat.create(messages=HELLO, max_tokens=2)
            async for _ in await client.chat.create(messages=HELLO, max_tokens=2, stream=True):
                pass
            await client.embeddings.create(input="y")

    asyncio.run(run())
    for path, prefix, count in (("/v1/chat/completions", "chat ", 4), ("/completion", "text_completion ", 1),
                                ("/v1/embeddings", "embeddings ", 2)):
        received = [headers["traceparent"] for headers in fake_server.posts(path)]
        spans = _call_spans(telemetry, prefix)
        assert len(received) == len(spans) == count, path
        # Each request carried its own call span's trace id and span id (sampled), in order.
        assert received == [_traceparent(s) for s in sorted(spans, key=lambda s: s.start_time)], path
    # The phase spans are the call span's children, never the propagated parent.
    phase_ids = {f"{s.context.span_id:016x}" for s in telemetry.spans()
                 if s.name in (names.SPAN_PREFILL, names.SPAN_DECODE)}
    assert phase_ids and not any(tp.split("-")[2] in phase_ids
                                 for _, _, headers in fake_server.received for tp in [headers["traceparent"]])


def test_tracestate_and_baggage_travel_through_the_global_propagator(fake_server: HeaderRecordingServer,
                                                                    telemetry: InMemoryTelemetry) -> None:
    """An incoming parent's tracestate and the current baggage reach the server with the call's span."""
    parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "abc")]))
    ctx = baggage.set_baggage("tenant", "t1", trace.set_span_in_context(NonRecordingSpan(parent)))
    token = context.attach(ctx)
    try:
        with LlamaCppClient(fake_server.url, model="fake-model") as client:
            client.chat.create(messages=HELLO, max_tokens=2)
    finally:
        context.detach(token)
    (headers,) = fake_server.posts("/v1/chat/completions")
    (span,) = _call_spans(telemetry, "chat ")
    assert span.context.trace_id == 0x1234 and span.parent is not None and span.parent.span_id == 0x5678
    assert headers["traceparent"] == _traceparent(span)
    assert headers["tracestate"] == "vendor=abc"
    assert headers["baggage"] == "tenant=t1"


def test_plain_endpoints_carry_the_current_context(fake_server: HeaderRecordingServer,
                                                   telemetry: InMemoryTelemetry) -> None:
    """Unrecorded requests (/health) carry whatever span is current; with none, no traceparent is made up."""
    from llamatelemetry.otel import get_tracer

    with LlamaCppClient(fake_server.url) as client:
        client.health()
        with get_tracer().start_as_current_span("app work") as outer:
            client.health()
    first, second = (headers for _, path, headers in fake_server.received if path == "/health")
    assert "traceparent" not in first
    assert second["traceparent"] == _traceparent(outer)


def test_propagation_can_be_turned_off(fake_server: HeaderRecordingServer, telemetry: InMemoryTelemetry) -> None:
    """propagate=False sends no trace headers; an empty global propagator (what OTEL_PROPAGATORS=none sets) neither."""
    with LlamaCppClient(fake_server.url, model="fake-model", propagate=False) as client:
        assert client.propagate is False
        list(client.chat.create(messages=HELLO, max_tokens=2, stream=True))
    previous = get_global_textmap()
    set_global_textmap(CompositePropagator([]))
    try:
        with LlamaCppClient(fake_server.url, model="fake-model") as client:
            client.chat.create(messages=HELLO, max_tokens=2)
    finally:
        set_global_textmap(previous)
    assert len(_call_spans(telemetry, "chat ")) == 2  # still recorded: only the headers are left out
    for headers in fake_server.posts("/v1/chat/completions"):
        assert not {"traceparent", "tracestate", "baggage"} & set(headers)


def test_the_bench_driver_sends_each_request_span_as_traceparent(fake_server: HeaderRecordingServer,
                                                                 telemetry: InMemoryTelemetry) -> None:
    """llamatelemetry bench's llama.cpp driver: each streamed request carries its chat span's context."""
    from llamatelemetry.bench import BenchmarkRunner

    report = BenchmarkRunner("llama.cpp", gpu_monitor=None, driver_options={"poll_slots": False}).run(
        fake_server.url, prompts=["Hi"], n_tokens=2, concurrency=1, num_requests=2, warmup=0)
    assert report.tests[0].summary.completed == 2
    received = [headers["traceparent"] for headers in fake_server.posts("/v1/chat/completions")]
    spans = sorted(_call_spans(telemetry, "chat "), key=lambda s: s.start_time)
    assert len(received) == 2 and received == [_traceparent(s) for s in spans]
