"""Reading responses: what a response said (``Outcome``) and the SSE parser that fills it chunk by chunk.

``StreamParser.feed`` turns one server-sent-events line into a ``StreamChunk``. Per chunk that
carries output it appends one ``time.perf_counter()`` stamp and nothing else; the figures
(``StreamStats``) are computed once, by ``stats_of``, when asked or when the stream ended.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Final, Literal

from llamatelemetry_llamacpp.errors import LlamaCppError, StreamProtocolError, http_error
from llamatelemetry_llamacpp.records import (
    ChatCompletion,
    Completion,
    EmbeddingsResponse,
    StreamChunk,
    StreamStats,
    Timings,
    Usage,
    as_int,
    as_str,
)
from llamatelemetry_llamacpp.semconv import semconv_finish_reason

__all__ = ["Outcome", "StreamParser", "stats_of", "SSELineSplitter", "sse_lines", "async_sse_lines"]

_DONE: Final = "[DONE]"
# The SSE rule: a line ends at CRLF, LF or CR, and nowhere else. str.splitlines (and httpx's
# iter_lines) also split at U+2028, U+0085, form feed..., which a generated token may contain raw.
_SSE_EOL: Final = re.compile(r"\r\n|\r|\n")


class SSELineSplitter:
    """Splits streamed text into SSE lines (CRLF, LF or CR), whatever the chunk boundaries."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        """The lines that ``text`` completes (the unterminated rest waits for the next call)."""
        text = self._pending + text
        # A final CR may be the first half of a CRLF split across chunks: keep it for the next call.
        cut = len(text) - 1 if text.endswith("\r") else len(text)
        lines = _SSE_EOL.split(text[:cut])
        self._pending = lines.pop() + text[cut:]
        return lines

    def close(self) -> list[str]:
        """The last line(s) when the body ended without a final line break."""
        rest, self._pending = self._pending, ""
        lines = _SSE_EOL.split(rest)
        if lines[-1] == "":
            lines.pop()
        return lines


def sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """The SSE lines of text arriving in ``chunks`` (e.g. ``httpx.Response.iter_text()``)."""
    splitter = SSELineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.close()


async def async_sse_lines(chunks: AsyncIterable[str]) -> AsyncIterator[str]:
    """``sse_lines`` for an async body (e.g. ``httpx.Response.aiter_text()``)."""
    splitter = SSELineSplitter()
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.close():
        yield line


class Outcome:
    """What a response said, filled by a parser (or read from a whole response) while it runs."""

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
        #: The generated text's pieces, when it is kept (``None``: not kept).
        self.parts: list[str] | None = None
        self.tokens_evaluated: int | None = None
        self.tokens_predicted: int | None = None

    def usage(self) -> Usage | None:
        """The token counts: the server's usage, else ``/completion``'s own counters."""
        usage = Usage.from_json(self.usage_json)
        if usage is None and (self.tokens_evaluated is not None or self.tokens_predicted is not None):
            timings = self.timings()
            usage = Usage(self.tokens_evaluated, self.tokens_predicted, None,
                          timings.cache_n if timings is not None else None)
        return usage

    def timings(self) -> Timings | None:
        """The server's ``timings``, if it sent them."""
        return Timings.from_json(self.timings_json)

    def text(self) -> str:
        """The generated text kept ("" when it was not kept)."""
        return "".join(self.parts) if self.parts is not None else ""

    @classmethod
    def of_chat(cls, response: ChatCompletion) -> Outcome:
        """What a whole chat completion said."""
        outcome = cls()
        outcome.usage_json = response.raw.get("usage")
        outcome.timings_json = response.raw.get("timings")
        outcome.server_finish_reason = response.choices[0].finish_reason if response.choices else None
        outcome.response_id, outcome.response_model = response.id, response.model
        outcome.parts = [response.text]
        return outcome

    @classmethod
    def of_completion(cls, response: Completion) -> Outcome:
        """What a whole ``/completion`` response said."""
        outcome = cls()
        outcome.timings_json = response.raw.get("timings")
        outcome.tokens_evaluated, outcome.tokens_predicted = response.tokens_evaluated, response.tokens_predicted
        outcome.server_finish_reason = response.stop_type
        outcome.response_model = response.model
        outcome.parts = [response.content]
        return outcome

    @classmethod
    def of_embeddings(cls, response: EmbeddingsResponse) -> Outcome:
        """What an embeddings response said (usage and model; no text)."""
        outcome = cls()
        outcome.usage_json = response.raw.get("usage")
        outcome.response_model = response.model
        return outcome


def stats_of(outcome: Outcome, started: float, now: float, *, ended: bool, closed_early: bool) -> StreamStats:
    """The figures of ``outcome``, timed from ``started`` to ``now`` (``time.perf_counter()`` values)."""
    stamps = outcome.stamps
    return StreamStats(
        chunks=len(stamps), time_to_first_chunk=stamps[0] - started if stamps else None, duration=now - started,
        usage=outcome.usage(), timings=outcome.timings(),
        finish_reason=semconv_finish_reason(outcome.server_finish_reason),
        server_finish_reason=outcome.server_finish_reason, response_id=outcome.response_id,
        model=outcome.response_model, ended=ended, closed_early=closed_early,
    )


class StreamParser(Outcome):
    """Parses the SSE lines of one stream (chat or ``/completion``) into chunks, recording its outcome."""

    __slots__ = ("done", "ended", "kind", "path", "url")

    def __init__(self, kind: Literal["chat", "completion"], url: str, path: str, keep_text: bool) -> None:
        super().__init__()
        self.kind = kind
        #: The server sent its last event.
        self.done = False
        #: The stream ended for its reader (exhausted, closed, failed or collected).
        self.ended = False
        self.url = url
        self.path = path
        if keep_text:
            self.parts = []

    @property
    def end_marker(self) -> str:
        """How this kind of stream says it is complete, for error messages."""
        return "the final 'data: [DONE]'" if self.kind == "chat" else 'a last event with "stop": true'

    def truncated(self) -> StreamProtocolError:
        """The error for a stream whose body ended before its end marker."""
        return StreamProtocolError(self.url, self.path, f"it ended without {self.end_marker}")

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
        # Fields of an unexpected type are ignored, as if absent: a stream never fails on a field it only reads.
        text = ""
        finish: str | None = None
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta:
            text = as_str(delta.get("content")) or ""
            if text or delta.get("reasoning_content") or delta.get("tool_calls"):
                self.stamps.append(now)
                if self.parts is not None and text:
                    self.parts.append(text)
        finish = as_str(choice.get("finish_reason"))
        if finish:
            self.server_finish_reason = finish
        if "usage" in data:
            self.usage_json = data["usage"]
        if "timings" in data:
            self.timings_json = data["timings"]
        if self.response_id is None:
            self.response_id = as_str(data.get("id"))
            self.response_model = as_str(data.get("model"))
        return StreamChunk(data, text, finish)

    def _completion(self, data: dict[str, Any], now: float) -> StreamChunk:
        text = as_str(data.get("content")) or ""
        if text:
            self.stamps.append(now)
            if self.parts is not None:
                self.parts.append(text)
        if data.get("stop"):
            # llama.cpp's native stream has no [DONE]: the event with "stop": true is the last one.
            self.done = True
            self.server_finish_reason = as_str(data.get("stop_type"))
            self.timings_json = data.get("timings")
            self.tokens_evaluated = as_int(data.get("tokens_evaluated"))
            self.tokens_predicted = as_int(data.get("tokens_predicted"))
            self.response_model = as_str(data.get("model"))
            return StreamChunk(data, text, self.server_finish_reason)
        return StreamChunk(data, text, None)

    def _server_error(self, body: str) -> LlamaCppError:
        try:
            status = int(json.loads(body).get("error", {}).get("code", 500))
        except (ValueError, AttributeError, TypeError):
            status = 500
        return http_error(status, body, method="POST", path=self.path, url=self.url)
