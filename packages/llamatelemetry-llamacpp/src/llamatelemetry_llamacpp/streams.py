"""``Stream`` and ``AsyncStream``: a streamed response as an iterator of ``StreamChunk`` objects.

A stream ends exactly once: exhausted, closed (``close()``, ``aclose()``, leaving a ``with``
block), failed, or abandoned and garbage-collected; ending it closes the connection (so the
server stops generating) and ends the call's recording. While iterating, only the parser's one
timestamp per chunk is taken; everything else is computed at the end, except that the first
output chunk tells the recording (``output_started``), so the call's prefill phase span ends in
real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from llamatelemetry_llamacpp.records import StreamChunk, StreamStats
from llamatelemetry_llamacpp.sse import StreamParser, async_sse_lines, sse_lines, stats_of

if TYPE_CHECKING:
    import httpx

    from llamatelemetry_llamacpp.telemetry import CallRecording
    from llamatelemetry_llamacpp.transport import Transport

__all__ = ["Stream", "AsyncStream"]

log = logging.getLogger("llamatelemetry.llama_cpp")


class _StreamBase:
    """What sync and async streams share: the parser, the recording and the record of how they ended."""

    def __init__(self, parser: StreamParser, recording: CallRecording, transport: Transport) -> None:
        self._parser = parser
        self._recording = recording
        self._transport = transport
        self._closed_early = False
        self._ended_at: float | None = None
        #: Until the first output chunk: tell the recording when it arrives (one flag test per chunk).
        self._awaiting_output = recording.generation.active

    @property
    def stats(self) -> StreamStats:
        """What was measured so far (final once the stream ended)."""
        parser = self._parser
        now = self._ended_at if self._ended_at is not None else time.perf_counter()
        return stats_of(parser, self._recording.started, now, ended=parser.ended, closed_early=self._closed_early)

    @property
    def closed(self) -> bool:
        """Whether the stream has ended (exhausted, closed, failed or collected)."""
        return self._parser.ended

    def _record_end(self, error: BaseException | None, closed_early: bool) -> None:
        self._parser.ended = True
        self._ended_at = time.perf_counter()
        self._closed_early = closed_early
        self._recording.end(self._parser, error, ended_at=self._ended_at, closed_early=closed_early)

    def _output_arrived(self) -> None:
        self._awaiting_output = False
        self._recording.output_started(self._parser)

    def _failure(self, exc: BaseException) -> BaseException:
        return self._transport.stream_failure(exc, self._parser.path)


class Stream(_StreamBase):
    """A streamed response: iterate for ``StreamChunk`` objects; use ``with`` or ``close()`` to stop early."""

    def __init__(self, response: httpx.Response, parser: StreamParser, recording: CallRecording,
                 transport: Transport) -> None:
        super().__init__(parser, recording, transport)
        self._response = response
        # SSE lines, not iter_lines(): that also splits at U+2028/U+0085, which a generated token may hold.
        self._lines = sse_lines(response.iter_text())

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamChunk:
        parser = self._parser
        if parser.ended:
            raise StopIteration
        if not parser.done:
            try:
                for line in self._lines:
                    chunk = parser.feed(line)
                    if chunk is not None:
                        if self._awaiting_output and parser.stamps:
                            self._output_arrived()
                        return chunk
                    if parser.done:
                        break
                else:
                    raise parser.truncated()
            except BaseException as exc:
                error = self._failure(exc)
                self._end(error)
                if error is exc:
                    raise
                raise error from exc
        self._end(None)
        raise StopIteration

    def _end(self, error: BaseException | None, *, closed_early: bool = False) -> None:
        if self._parser.ended:
            return
        self._record_end(error, closed_early)
        try:
            self._response.close()
        except Exception:  # the connection is dropped either way
            log.debug("closing a llama.cpp stream's response failed", exc_info=True)

    def close(self) -> None:
        """Stop reading: the connection closes (the server stops generating) and the recording ends."""
        self._end(None, closed_early=not self._parser.done)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned stream still ends its span; nothing may escape a finalizer.
        try:
            if not self._parser.ended:
                self._end(None, closed_early=not self._parser.done)
        except Exception:
            pass


class AsyncStream(_StreamBase):
    """An async streamed response: ``async for`` over ``StreamChunk`` objects; ``aclose()`` to stop early."""

    def __init__(self, response: httpx.Response, parser: StreamParser, recording: CallRecording,
                 transport: Transport, pending_closes: set[asyncio.Task[None]]) -> None:
        super().__init__(parser, recording, transport)
        self._response = response
        self._lines: AsyncIterator[str] = async_sse_lines(response.aiter_text())
        self._pending_closes = pending_closes

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        parser = self._parser
        if parser.ended:
            raise StopAsyncIteration
        if not parser.done:
            try:
                while True:
                    try:
                        line = await self._lines.__anext__()
                    except StopAsyncIteration:
                        raise parser.truncated() from None
                    chunk = parser.feed(line)
                    if chunk is not None:
                        if self._awaiting_output and parser.stamps:
                            self._output_arrived()
                        return chunk
                    if parser.done:
                        break
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    # Cancelling the consumer is a close, not a server failure.
                    await self._aend(None, closed_early=True)
                    raise
                error = self._failure(exc)
                await self._aend(error)
                if error is exc:
                    raise
                raise error from exc
        await self._aend(None)
        raise StopAsyncIteration

    async def _aend(self, error: BaseException | None, *, closed_early: bool = False) -> None:
        if self._parser.ended:
            return
        self._record_end(error, closed_early)
        try:
            await self._response.aclose()
        except BaseException:  # the connection is dropped either way
            log.debug("closing a llama.cpp stream's response failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop reading: the connection closes (the server stops generating) and the recording ends."""
        await self._aend(None, closed_early=not self._parser.done)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # An abandoned stream still ends its span; its connection is closed on the running loop, if any.
        try:
            if self._parser.ended:
                return
            self._record_end(None, not self._parser.done)
            loop = asyncio.get_running_loop()
        except Exception:
            return
        try:
            task = loop.create_task(self._response.aclose())
            # Held by the client until it ran, so the task is not collected first.
            self._pending_closes.add(task)
            task.add_done_callback(self._pending_closes.discard)
        except Exception:
            pass
