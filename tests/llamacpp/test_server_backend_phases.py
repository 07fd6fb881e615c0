"""Phase spans through the engine: a server backend's request gets the client's real-time prefill/decode children.

Against llama.cpp's own server (xllamacpp, SmolLM2): the engine's request span gets ``llama_cpp.prefill``
(send -> first output chunk) and ``llama_cpp.decode`` (first chunk -> end), each ended as it happens,
with the server's timings beside them as attributes. In-process backends keep their own single pair.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from llamatelemetry.errors import ContextOverflowError
from llamatelemetry.inference.api import create_engine
from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.recording import start_generation
from llamatelemetry.inference.types import SamplingParams
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("httpx")

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import LlamaCppClient

GREEDY = SamplingParams(temperature=0.0, seed=1)
PHASES = (names.SPAN_PREFILL, names.SPAN_DECODE)


def _request(content: str = "Count from one to twenty.", **options: Any) -> InferenceRequest:
    options.setdefault("max_tokens", 12)
    options.setdefault("sampling", GREEDY)
    return InferenceRequest(messages=[{"role": "user", "content": content}], **options)


class _EndClock(SpanProcessor):
    """A span processor that notes the wall clock when each span ends (when it reaches the exporters)."""

    def __init__(self) -> None:
        self.ended_at: dict[str, list[int]] = {}

    def on_end(self, span: ReadableSpan) -> None:
        self.ended_at.setdefault(span.name, []).append(time.time_ns())


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


def _children(t: InMemoryTelemetry, parent: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for span in t.spans():
        if span.parent is not None and span.parent.span_id == parent.context.span_id:
            found.setdefault(span.name, []).append(span)
    return found


def test_an_engine_request_gets_real_time_phase_children(telemetry: InMemoryTelemetry, llama_server: Any) -> None:
    """create_engine("llama.cpp", llama_server_url=...): prefill then decode under the request span, ended live."""
    clock = _EndClock()
    telemetry.telemetry.tracer_provider.add_span_processor(clock)
    engine = create_engine("llama.cpp", llama_server_url=llama_server.base_url)
    with engine:
        before = time.time_ns()
        result = engine.generate(_request())
        after = time.time_ns()
    chat = telemetry.span(f"chat {Path(llama_server.model_path).stem}")
    children = _children(telemetry, chat)
    assert {name: len(spans) for name, spans in children.items()} == {names.SPAN_PREFILL: 1, names.SPAN_DECODE: 1}
    (prefill,), (decode,) = children[names.SPAN_PREFILL], children[names.SPAN_DECODE]
    assert prefill.kind.name == decode.kind.name == "INTERNAL" and chat.kind.name == "CLIENT"
    assert prefill.attributes[core_names.PHASE] == core_names.PHASE_PREFILL
    assert decode.attributes[core_names.PHASE] == core_names.PHASE_DECODE

    # Order: request start <= prefill start < prefill end = decode start <= decode end <= request end.
    assert before <= chat.start_time <= prefill.start_time < prefill.end_time == decode.start_time
    assert decode.start_time <= decode.end_time <= chat.end_time <= after
    # The prefill's length is the client's time to first chunk (two clocks, the same moments).
    ttfc = chat.attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert ttfc == pytest.approx(result.ttft_ms / 1e3)
    assert abs((prefill.end_time - prefill.start_time) / 1e9 - ttfc) < 0.01
    # Never back-dated: each phase span reached the exporters as its phase ended, and the prefill
    # one while the stream was still running (before the decode phase ended).
    (prefill_seen,), (decode_seen,) = clock.ended_at[names.SPAN_PREFILL], clock.ended_at[names.SPAN_DECODE]
    assert 0 <= prefill_seen - prefill.end_time < 2.5e8 and 0 <= decode_seen - decode.end_time < 2.5e8
    assert prefill_seen < decode.end_time

    # The server's timings sit beside the phases as attributes: all on the request span, the
    # generation's on the decode span; the spans' times stay the client's clock.
    assert decode.attributes[core_names.PHASE_TOKENS] == result.output_tokens - 1 == 11
    for key in (names.TIMINGS_PREDICTED_MS, names.TIMINGS_PREDICTED_N, names.TIMINGS_PREDICTED_PER_SECOND):
        assert decode.attributes[key] == chat.attributes[key]
    for key in (names.TIMINGS_PROMPT_MS, names.TIMINGS_CACHE_N):
        assert key in chat.attributes and key not in decode.attributes and key not in prefill.attributes
    # A streamed request looks the same: the backend streams either way.
    with engine:
        engine.generate(_request(stream=True, max_tokens=3))
    streamed = [s for s in telemetry.spans() if s.name == chat.name][-1]
    assert set(_children(telemetry, streamed)) == set(PHASES)
    assert streamed.attributes[gen_ai.GEN_AI_REQUEST_STREAM] is True


def test_a_request_the_server_refuses_ends_its_prefill_span_as_an_error(telemetry: InMemoryTelemetry,
                                                                       llama_server: Any) -> None:
    """No output ever came: only the prefill span, ERROR like the request span, with the same error type."""
    with LlamaCppClient(llama_server.base_url) as client:
        n_ctx = client.props()["default_generation_settings"]["n_ctx"]
    with create_engine("llama.cpp", llama_server_url=llama_server.base_url) as engine, \
            pytest.raises(ContextOverflowError):
        engine.generate(_request("hello " * (n_ctx + 50)))
    (chat,) = [s for s in telemetry.spans() if s.name not in PHASES]
    children = _children(telemetry, chat)
    assert set(children) == {names.SPAN_PREFILL}
    (prefill,) = children[names.SPAN_PREFILL]
    assert prefill.status.status_code.name == chat.status.status_code.name == "ERROR"
    assert prefill.attributes[gen_ai.ERROR_TYPE] == chat.attributes[gen_ai.ERROR_TYPE]
    assert prefill.end_time <= chat.end_time


def test_the_backend_alone_and_a_plain_engine_generation_get_no_phases(telemetry: InMemoryTelemetry,
                                                                        llama_server: Any) -> None:
    """Outside an engine the backend records nothing; the engine itself opens no phase spans."""
    from llamatelemetry_llamacpp.server_backend import LlamaCppServerBackend

    backend = LlamaCppServerBackend(llama_server.base_url)
    backend.start()
    try:
        assert backend.generate(_request(max_tokens=2)).output_tokens == 2
    finally:
        backend.shutdown()
    assert telemetry.spans() == []
    # An internal generation (an in-process backend's, under the engine) gets none from the recorder,
    # and start_phases() after its first chunk, or twice, opens nothing more.
    generation = start_generation(provider="my_engine", operation="chat", model="m", kind="internal", stream=True)
    generation.chunk()
    generation.start_phases()
    generation.finish()
    client_side = start_generation(provider="my_engine", operation="chat", model="m", kind="client", stream=False)
    client_side.start_phases()
    client_side.start_phases()
    client_side.chunk()
    client_side.finish()
    assert sorted(s.name for s in telemetry.spans() if s.name.startswith("my_engine.")) == [
        "my_engine.decode", "my_engine.prefill"]


@pytest.fixture(scope="module")
def in_process(tiny_gguf: Path) -> Iterator[InferenceEngine]:
    """The tiny model in process (one thread), under an engine."""
    pytest.importorskip("llama_cpp")
    from llamatelemetry_llamacpp.backend import LlamaCppBackend

    engine = InferenceEngine(LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1)).start()
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_in_process_backends_keep_exactly_one_pair(in_process: InferenceEngine, stream: bool) -> None:
    """The in-process llama.cpp backend times its own phases: one prefill and one decode, streamed or not."""
    with InMemoryTelemetry() as t:
        in_process.generate(_request("tell me a story", max_tokens=6, stream=stream))
        (request,) = [s for s in t.spans() if s.name not in PHASES]
        children = _children(t, request)
    assert request.kind.name == "INTERNAL"
    assert {name: len(spans) for name, spans in children.items()} == {names.SPAN_PREFILL: 1, names.SPAN_DECODE: 1}
    assert len(t.spans()) == 3
