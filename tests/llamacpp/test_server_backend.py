"""LlamaCppServerBackend: the LLMBackend over a real llama.cpp server, alone and inside InferenceEngine."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.errors import BackendNotStartedError, BackendStartError, ContextOverflowError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.types import SamplingParams
from llamatelemetry.plugins import hookimpl
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry.testing import BackendConformance, InMemoryTelemetry, fresh_plugin_manager

pytest.importorskip("httpx")

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import LlamaCppClient
from llamatelemetry_llamacpp.errors import ContextSizeExceededError, ServerUnavailableError
from llamatelemetry_llamacpp.server_backend import LlamaCppServerBackend

GREEDY = SamplingParams(temperature=0.0, seed=1)


def _request(content: str = "Say hello.", **options: Any) -> InferenceRequest:
    options.setdefault("max_tokens", 5)
    options.setdefault("sampling", GREEDY)
    return InferenceRequest(messages=[{"role": "user", "content": content}], **options)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class TestServerBackendConformance(BackendConformance):
    """The core's conformance suite, run against the server backend."""

    @pytest.fixture
    def backend(self, llama_server: Any) -> LLMBackend:
        return LlamaCppServerBackend(llama_server.base_url)

    @pytest.fixture
    def context_window(self, llama_server: Any) -> int:
        """A slot's context size, as the server reports it."""
        with LlamaCppClient(llama_server.base_url) as client:
            return int(client.props()["default_generation_settings"]["n_ctx"])


def test_engine_records_one_span_with_the_servers_figures(llama_server: Any) -> None:
    """Through the engine: one CLIENT span (the engine's), carrying usage, client TTFT and the server's timings."""
    backend = LlamaCppServerBackend(llama_server.base_url)
    assert backend.server_port == int(llama_server.base_url.rsplit(":", 1)[1])
    with InMemoryTelemetry() as t, InferenceEngine(backend) as engine:
        assert backend.model_name == Path(llama_server.model_path).stem  # learned at start()
        result = engine.generate(_request(request_id="req-1"))
        (span,) = t.spans()  # the backend's client opens no span of its own
        attributes = dict(span.attributes or {})
        durations = t.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
        ttfc = t.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK)
        gaps = t.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK)
        server_ttft = t.metric_points(gen_ai.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN)

    assert span.name == f"chat {backend.model_name}" and span.kind.name == "CLIENT"
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    assert attributes[gen_ai.SERVER_ADDRESS] == "127.0.0.1" and attributes[gen_ai.SERVER_PORT] == backend.server_port
    assert attributes[core_names.REQUEST_ID] == "req-1" == result.request_id
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == result.input_tokens
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == result.output_tokens == 5
    assert attributes[gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == result.cached_input_tokens
    assert attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert attributes[gen_ai.GEN_AI_RESPONSE_ID] == result.response_id
    assert attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(result.ttft_ms / 1e3)
    assert attributes[names.STREAM_CHUNKS] >= 1
    assert attributes[names.TIMINGS_PREDICTED_N] == 5
    assert attributes[names.TIMINGS_PREDICTED_PER_SECOND] == result.decode_tps
    assert attributes[names.TIMINGS_PROMPT_PER_SECOND] == result.prefill_tps

    assert [p.value for p in durations] == [1]  # recorded by the engine, not twice
    assert [p.value for p in ttfc] == [1]
    assert sum(p.value for p in gaps) == attributes[names.STREAM_CHUNKS] - 1
    assert server_ttft == []  # a server backend's TTFT is a client figure


def test_result_fields(llama_server: Any) -> None:
    """Exact usage, cached prompt tokens inside the input count, client-clock TTFT within the total."""
    backend = LlamaCppServerBackend(llama_server.base_url, timeout=30)
    backend.start()
    try:
        request = _request("List two fruits, please.", max_tokens=3)
        first = backend.generate(request)
        second = backend.generate(request)
    finally:
        backend.shutdown()
    assert isinstance(second, InferenceResult) and second.text
    assert second.input_tokens == first.input_tokens and second.output_tokens == 3
    assert second.cached_input_tokens is not None and 0 < second.cached_input_tokens < second.input_tokens
    assert second.attributes[names.TIMINGS_CACHE_N] == second.cached_input_tokens
    assert second.ttft_ms is not None and second.total_ms is not None and 0 <= second.ttft_ms <= second.total_ms
    assert second.tps is not None and second.tps > 0
    assert second.finish_reason == "length" and second.model == str(llama_server.model_path)
    assert second.request_id == request.request_id and second.response_id


def test_text_completion_operation(llama_server: Any) -> None:
    """operation="text_completion" sends the raw text to /completion and is named so."""
    with InMemoryTelemetry() as t, InferenceEngine(LlamaCppServerBackend(llama_server.base_url)) as engine:
        result = engine.generate(_request("The capital of France is", operation="text_completion", max_tokens=3))
        (span,) = t.spans()
    assert span.name.startswith("text_completion ")
    assert result.output_tokens == 3 and result.input_tokens and result.text


def test_request_hooks_run_once(llama_server: Any) -> None:
    """The engine runs the request hooks; the backend's client does not run them again."""
    calls: list[str] = []

    class Recorder:
        @hookimpl
        def llamatelemetry_request_start(self, span: Any, request: InferenceRequest) -> None:
            calls.append("start")

        @hookimpl
        def llamatelemetry_request_end(self, span: Any, request: InferenceRequest, result: Any, error: Any) -> None:
            calls.append("end")

    with fresh_plugin_manager(Recorder()), InMemoryTelemetry(), \
            InferenceEngine(LlamaCppServerBackend(llama_server.base_url)) as engine:
        engine.generate(_request(max_tokens=2))
    assert calls == ["start", "end"]


def test_server_errors_reach_the_engine_span(llama_server: Any) -> None:
    """A request the server refuses raises its own error through the engine, whose span records it."""
    with LlamaCppClient(llama_server.base_url) as client:
        n_ctx = client.props()["default_generation_settings"]["n_ctx"]
    with InMemoryTelemetry() as t, InferenceEngine(LlamaCppServerBackend(llama_server.base_url)) as engine:
        with pytest.raises(ContextOverflowError) as raised:  # the core class, as for every backend
            engine.generate(_request("hello " * (n_ctx + 50)))
        assert type(raised.value) is ContextSizeExceededError and raised.value.n_ctx == n_ctx
        (span,) = t.spans()
    assert span.status.status_code.name == "ERROR"
    assert span.attributes[gen_ai.ERROR_TYPE] == "llamatelemetry_llamacpp.errors.ContextSizeExceededError"


def test_start_fails_clearly_without_a_server() -> None:
    """start() checks /health: no server is a ServerUnavailableError, wrapped by the engine."""
    url = _closed_port_url()
    backend = LlamaCppServerBackend(url, retries=0)
    with pytest.raises(ServerUnavailableError, match=r"Cannot reach the llama\.cpp server"):
        backend.start()
    with pytest.raises(BackendNotStartedError):
        backend.generate(_request())
    with pytest.raises(BackendStartError, match="Cannot reach"):
        InferenceEngine(LlamaCppServerBackend(url, retries=0)).start()
    with pytest.raises(ValueError, match=r"http\(s\) URL"):
        LlamaCppServerBackend("127.0.0.1:8090")


def test_create_engine_gives_the_server_backend(llama_server: Any) -> None:
    """create_engine("llama.cpp", llama_server_url=...) makes this backend, spans of kind CLIENT."""
    from llamatelemetry.inference.api import create_engine

    engine = create_engine("llama.cpp", llama_server_url=llama_server.base_url)
    assert isinstance(engine.backend, LlamaCppServerBackend) and engine.span_kind == "client"
    with InMemoryTelemetry() as t, engine:
        engine.generate(_request(max_tokens=2))
        (span,) = t.spans()
    assert span.kind.name == "CLIENT"
