"""Fuzzing the SSE stream parser: whatever a server sends, a stream fails only with a ``LlamaCppError``.

``StreamParser.feed`` documents two failures: ``StreamProtocolError`` (a ``data:`` line that is not
a JSON object, a stream that ends early) and the ``LlamaCppHTTPError`` classes for an error the
server reports inside the stream. Both are ``LlamaCppError``; nothing else may escape, and the
outcome's figures (text, usage, timings, stats) must be computable after any input.
"""

from __future__ import annotations

import asyncio
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

import pytest
from fuzzing import TEST_TIMEOUT_S, examples, json_values, mutated
from http_stand_in import serving
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llamatelemetry_llamacpp.client import AsyncLlamaCppClient, LlamaCppClient
from llamatelemetry_llamacpp.errors import LlamaCppError, StreamProtocolError
from llamatelemetry_llamacpp.sse import StreamParser, sse_lines, stats_of

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

DATA = Path(__file__).parent / "data"
#: Real streams captured from llama.cpp's server (xllamacpp, SmolLM2-135M): chat and native /completion.
CHAT = (DATA / "chat_stream.sse").read_bytes()
COMPLETION = (DATA / "completion_stream.sse").read_bytes()


def _read(kind: Literal["chat", "completion"], body: bytes, chunk_sizes: list[int] | None = None) -> StreamParser:
    """Feed ``body`` to a parser the way a stream reads it (UTF-8 text in chunks, SSE lines); return it."""
    parser = StreamParser(kind, "http://127.0.0.1:8090", "/fuzz", keep_text=True)
    text = body.decode("utf-8", "replace")
    pieces, at = [], 0
    for size in chunk_sizes or [len(text) or 1]:
        pieces.append(text[at:at + size])
        at += size
    pieces.append(text[at:])
    started = time.perf_counter()
    try:
        for line in sse_lines(pieces):
            parser.feed(line)
            if parser.done:
                break
        else:
            raise parser.truncated()
    except LlamaCppError:
        pass
    # Whatever happened, the figures recorded so far are computable (the span is built from them).
    parser.text()
    parser.usage()
    parser.timings()
    stats_of(parser, started, time.perf_counter(), ended=True, closed_early=False)
    return parser


def test_the_real_streams_parse() -> None:
    chat = _read("chat", CHAT)
    assert chat.done and chat.text() and chat.usage() is not None and chat.server_finish_reason == "stop"
    completion = _read("completion", COMPLETION)
    assert completion.done and completion.text() and completion.server_finish_reason == "limit"


@settings(max_examples=examples(1500))
@given(kind=st.sampled_from(["chat", "completion"]), body=st.binary(max_size=512))
def test_arbitrary_bytes(kind: Literal["chat", "completion"], body: bytes) -> None:
    _read(kind, body)


@settings(max_examples=examples(800))
@given(data=st.data(), kind=st.sampled_from(["chat", "completion"]))
def test_mutated_real_streams(data: st.DataObject, kind: Literal["chat", "completion"]) -> None:
    body = data.draw(mutated(CHAT if kind == "chat" else COMPLETION))
    sizes = data.draw(st.lists(st.integers(1, 300), max_size=8))
    _read(kind, body, sizes)


def _event(value: Any) -> bytes:
    return b"data: " + json.dumps(value).encode() + b"\n\n"


@settings(max_examples=examples(400))
@given(kind=st.sampled_from(["chat", "completion"]), event=json_values(),
       shape=st.dictionaries(st.sampled_from(["choices", "delta", "content", "finish_reason", "usage", "timings",
                                              "stop", "stop_type", "tokens_predicted", "id", "model", "error"]),
                             json_values(6), max_size=5))
@example(kind="chat", event={"choices": {"0": 1}}, shape={})
@example(kind="chat", event={"choices": ["x"]}, shape={})
@example(kind="chat", event={"choices": [{"delta": "text"}]}, shape={})
@example(kind="chat", event={"choices": [{"delta": {"content": 5}, "finish_reason": ["stop"]}]}, shape={})
@example(kind="completion", event={"content": 7, "stop": True, "stop_type": {}}, shape={})
def test_well_formed_events_of_any_shape(kind: Literal["chat", "completion"], event: Any,
                                         shape: dict[str, Any]) -> None:
    """Valid SSE and JSON, fields of every type: a wrong type is ignored or a LlamaCppError, never a crash."""
    chat_shape = {"choices": [{"delta": {k: v for k, v in shape.items() if k in ("content",)},
                               "finish_reason": shape.get("finish_reason")}], **shape}
    parser = _read(kind, _event(event) + _event(chat_shape if kind == "chat" else shape))
    assert isinstance(parser.text(), str)


@settings(max_examples=examples(500))
@given(pieces=st.lists(st.text(max_size=20), min_size=1, max_size=12), cut=st.lists(st.integers(1, 40), max_size=10))
def test_text_round_trips(pieces: list[str], cut: list[int]) -> None:
    """Any generated text (line separators and U+2028 included) comes back whole, whatever the chunking."""
    body = b"".join(_event({"choices": [{"delta": {"content": p}, "finish_reason": None}]}) for p in pieces)
    body += _event({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n"
    body = body.replace(b"\\u2028", "\u2028".encode()).replace(b"\\u0085", "\u0085".encode())
    parser = _read("chat", body, cut)
    assert parser.done and parser.text() == "".join(pieces)


@settings(max_examples=examples(500))
@given(text=st.text(alphabet=st.sampled_from("ab\r\n\u2028\x85 "), max_size=60), cut=st.lists(st.integers(1, 9)))
def test_sse_lines_do_not_depend_on_chunking(text: str, cut: list[int]) -> None:
    """Lines end at CR, LF or CRLF only (the SSE rule), however the text arrives."""
    pieces, at = [], 0
    for size in cut:
        pieces.append(text[at:at + size])
        at += size
    pieces.append(text[at:])
    whole = list(sse_lines([text]))
    assert list(sse_lines(pieces)) == whole
    assert not any("\r" in line or "\n" in line for line in whole)
    assert "".join(whole).count("\u2028") == text.count("\u2028")


def test_a_data_line_that_is_not_json_is_a_stream_protocol_error() -> None:
    parser = StreamParser("chat", "http://127.0.0.1:8090", "/fuzz", keep_text=False)
    with pytest.raises(StreamProtocolError):
        parser.feed("data: {not json")
    with pytest.raises(StreamProtocolError):
        parser.feed("data: [1, 2]")


class _LineSeparatorServer(BaseHTTPRequestHandler):
    """A stand-in llama.cpp server (named as such): a chat stream whose tokens hold raw U+2028 and U+0085.

    llama.cpp writes JSON with raw UTF-8, so a model that emits these characters sends them unescaped.
    """

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b"".join(_event({"choices": [{"delta": {"content": piece}, "finish_reason": None}], "id": "c",
                                "model": "m"}) for piece in _SEPARATED)
        body += _event({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n"
        body = body.replace(b"\\u2028", "\u2028".encode()).replace(b"\\u0085", "\u0085".encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


_SEPARATED = ["line\u2028separator", " next\u0085line", " done"]


def test_the_client_keeps_unicode_line_separators_inside_tokens() -> None:
    """The client splits SSE lines at CR/LF only: a token with U+2028 is not a broken stream."""
    messages = [{"role": "user", "content": "hi"}]

    async def read_async(url: str) -> str:
        async with AsyncLlamaCppClient(url, retries=0) as client:
            stream = await client.chat.create(messages=messages, stream=True)
            return "".join([chunk.delta_text async for chunk in stream])

    with serving(_LineSeparatorServer) as url:
        with LlamaCppClient(url, retries=0) as client:
            assert "".join(c.delta_text for c in client.chat.create(messages=messages, stream=True)) == \
                "".join(_SEPARATED)
        assert asyncio.run(read_async(url)) == "".join(_SEPARATED)
