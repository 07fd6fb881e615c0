"""Server-mode phases: a streamed call to llama.cpp's own server (xllamacpp) gets real-time prefill/decode spans."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.inference.recording import phase_span_name, start_generation
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("httpx")

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import AsyncLlamaCppClient, LlamaCppClient

HELLO = [{"role": "user", "content": "Count from one to ten."}]


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


def _children(t: InMemoryTelemetry, parent: Any) -> dict[str, Any]:
    found = {s.name: s for s in t.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id}
    return found


def _chat_span(t: InMemoryTelemetry, llama_server: Any) -> Any:
    return t.span(f"chat {Path(llama_server.model_path).stem}")


def test_phase_names_match_the_in_process_backends() -> None:
    """The recorder names the phase spans as the in-process llama.cpp backend does."""
    assert phase_span_name(gen_ai.PROVIDER_LLAMA_CPP, core_names.PHASE_PREFILL) == names.SPAN_PREFILL
    assert phase_span_name(gen_ai.PROVIDER_LLAMA_CPP, core_names.PHASE_DECODE) == names.SPAN_DECODE


def test_streamed_chat_has_real_time_phase_children(telemetry: InMemoryTelemetry, llama_server: Any) -> None:
    """Send -> first chunk is llama_cpp.prefill, first -> last chunk llama_cpp.decode, each ended as it happened."""
    with LlamaCppClient(llama_server.base_url) as client:
        before = time.time_ns()
        stream = client.chat.create(messages=HELLO, max_tokens=8, temperature=0.0, top_k=1, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        while not first.delta_text:
            first = next(chunks)
        first_seen = time.time_ns()
        # The prefill span is already exported while the stream is still going: it ended in real time.
        prefill_live = [s for s in telemetry.spans() if s.name == names.SPAN_PREFILL]
        assert len(prefill_live) == 1 and prefill_live[0].end_time is not None
        assert prefill_live[0].end_time <= first_seen
        assert not [s for s in telemetry.spans() if s.name == names.SPAN_DECODE]  # still open
        rest = list(chunks)
        after = time.time_ns()
    assert rest, "the stream should carry more than one chunk"
    chat = _chat_span(telemetry, llama_server)
    children = _children(telemetry, chat)
    assert set(children) == {names.SPAN_PREFILL, names.SPAN_DECODE}
    prefill, decode = children[names.SPAN_PREFILL], children[names.SPAN_DECODE]
    # Timing order: chat start = prefill start <= prefill end = decode start <= decode end <= chat end.
    assert before <= chat.start_time == prefill.start_time
    assert prefill.start_time < prefill.end_time == decode.start_time <= decode.end_time <= chat.end_time <= after
    ttfc = chat.attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert abs((prefill.end_time - prefill.start_time) / 1e9 - ttfc) < 0.01  # the same moments, two clocks
    assert prefill.attributes[core_names.PHASE] == core_names.PHASE_PREFILL
    assert decode.attributes[core_names.PHASE] == core_names.PHASE_DECODE
    output_tokens = chat.attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS]
    assert decode.attributes[core_names.PHASE_TOKENS] == output_tokens - 1
    # The server's own timings sit beside the phases as attributes: all on the chat span, the decode
    # figures on the decode span; the spans' times stay the client's clock.
    for key in (names.TIMINGS_PROMPT_MS, names.TIMINGS_PREDICTED_MS, names.TIMINGS_CACHE_N):
        assert key in chat.attributes
    assert decode.attributes[names.TIMINGS_PREDICTED_MS] == chat.attributes[names.TIMINGS_PREDICTED_MS]
    assert decode.attributes[names.TIMINGS_PREDICTED_N] == chat.attributes[names.TIMINGS_PREDICTED_N]
    assert names.TIMINGS_PROMPT_MS not in decode.attributes


def test_first_chunk_timings_go_on_the_prefill_span(telemetry: InMemoryTelemetry, llama_server: Any) -> None:
    """With timings_per_token the first chunk carries the prompt's timings: they go on the prefill span."""
    with LlamaCppClient(llama_server.base_url) as client:
        stream = client.chat.create(messages=HELLO, max_tokens=4, temperature=0.0, top_k=1, stream=True,
                                    timings_per_token=True)
        for _ in stream:
            pass
    chat = _chat_span(telemetry, llama_server)
    prefill = _children(telemetry, chat)[names.SPAN_PREFILL]
    assert prefill.attributes[names.TIMINGS_PROMPT_N] == chat.attributes[names.TIMINGS_PROMPT_N]
    assert prefill.attributes[names.TIMINGS_PROMPT_MS] == pytest.approx(chat.attributes[names.TIMINGS_PROMPT_MS])
    assert names.TIMINGS_CACHE_N in prefill.attributes
    assert names.TIMINGS_PREDICTED_MS not in prefill.attributes


def test_async_stream_and_completion_get_phases(telemetry: InMemoryTelemetry, llama_server: Any) -> None:
    """The async client's streams and /completion streams get the same two children."""

    async def run() -> None:
        async with AsyncLlamaCppClient(llama_server.base_url) as client:
            stream = await client.chat.create(messages=HELLO, max_tokens=4, temperature=0.0, top_k=1, stream=True)
            async for _ in stream:
                pass
            completion = await client.completion("One, two,", n_predict=4, temperature=0.0, top_k=1, stream=True)
            async for _ in completion:
                pass

    asyncio.run(run())
    parents = [s for s in telemetry.spans() if s.name.startswith(("chat ", "text_completion "))]
    assert len(parents) == 2
    for parent in parents:
        children = _children(telemetry, parent)
        assert set(children) == {names.SPAN_PREFILL, names.SPAN_DECODE}, parent.name
        assert children[names.SPAN_PREFILL].end_time == children[names.SPAN_DECODE].start_time


def test_non_streamed_chat_keeps_one_span(telemetry: InMemoryTelemetry, llama_server: Any) -> None:
    """A whole response is one span with the server's timings, no phase children."""
    with LlamaCppClient(llama_server.base_url) as client:
        client.chat.create(messages=HELLO, max_tokens=4, temperature=0.0, top_k=1)
    chat = _chat_span(telemetry, llama_server)
    assert _children(telemetry, chat) == {}
    assert names.TIMINGS_PREDICTED_MS in chat.attributes


def test_stream_closed_before_output_ends_the_prefill_span(telemetry: InMemoryTelemetry, llama_server: Any) -> None:
    """A stream closed before any output ends its open phase span with the call; no decode span appears."""
    with LlamaCppClient(llama_server.base_url) as client:
        stream = client.chat.create(messages=HELLO, max_tokens=8, stream=True)
        stream.close()
    chat = _chat_span(telemetry, llama_server)
    children = _children(telemetry, chat)
    assert set(children) == {names.SPAN_PREFILL}
    assert children[names.SPAN_PREFILL].end_time <= chat.end_time


def test_recorder_phases_for_any_streaming_client(telemetry: InMemoryTelemetry) -> None:
    """Any integration streaming through the recorder as a client gets the phases from chunk() alone."""
    generation = start_generation(provider="my_engine", operation="chat", model="m", kind="client", stream=True)
    time.sleep(0.002)
    generation.chunk()
    time.sleep(0.002)
    generation.chunk()
    error = RuntimeError("connection lost")
    generation.fail(error)
    prefill, decode = telemetry.span("my_engine.prefill"), telemetry.span("my_engine.decode")
    assert prefill.end_time == decode.start_time
    assert decode.status.status_code.name == "ERROR"
    assert decode.attributes[gen_ai.ERROR_TYPE] == "RuntimeError"
    # In-process generations make their own phase spans: the recorder adds none.
    start_generation(provider="my_engine", operation="chat", model="m", kind="internal", stream=True).finish()
    assert len([s for s in telemetry.spans() if s.name.startswith("my_engine.")]) == 2
