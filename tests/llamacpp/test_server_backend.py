"""LlamaCppServerBackend: the LLMBackend over a real llama.cpp server, alone and inside InferenceEngine."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from http_stand_in import serving

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


def _request_spans(t: InMemoryTelemetry) -> list[Any]:
    """The request spans: every span but the phase children (``llama_cpp.prefill``/``decode``) under them."""
    return [s for s in t.spans() if s.name not in (names.SPAN_PREFILL, names.SPAN_DECODE)]


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
        (span,) = _request_spans(t)  # the backend's client opens no span of its own
        # ... beside the phase children every streamed request gets (test_server_backend_phases.py)
        phases = sorted((s.name, s.parent.span_id) for s in t.spans() if s is not span and s.parent is not None)
        assert phases == [(names.SPAN_DECODE, span.context.span_id), (names.SPAN_PREFILL, span.context.span_id)]
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
        (span,) = _request_spans(t)
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
        (span,) = _request_spans(t)
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
        (span,) = _request_spans(t)
    assert span.kind.name == "CLIENT"


# ------------------------------------------------------------------ the served model's GGUF facts on every span


@pytest.fixture(scope="module")
def q4_k_m_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """llama.cpp's server (xllamacpp) on a tiny 256-wide llama quantized here to Q4_K_M by llama.cpp's quantizer."""
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    pytest.importorskip("llama_cpp", reason="the K-quants need llama-cpp-python")
    from llamatelemetry_llamacpp.quantize import quantize_gguf
    from llamatelemetry_llamacpp.testing import running_server, write_tiny_gguf

    folder = tmp_path_factory.mktemp("served-q4")
    f16 = write_tiny_gguf(folder / "tiny256-f16.gguf", n_embd=256, seed=1)  # 256 wide: a clean Q4_K_M
    quantized = quantize_gguf(f16, folder / "tiny256-q4.gguf", quant_type="Q4_K_M", nthread=1)
    with running_server(Path(quantized.output_path or ""), threads=1, n_parallel=1, ctx_size=256) as server:
        yield server


def test_every_engine_span_carries_the_served_models_gguf_facts(q4_k_m_server: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """start() reads /v1/models once; each request span, a failed one too, has the file type and sizes."""
    from llamatelemetry_llamacpp.quantize import read_gguf_facts

    served: Path = q4_k_m_server.model_path
    facts = read_gguf_facts(served)
    reads: list[str] = []
    models = LlamaCppClient.models

    def counted(self: LlamaCppClient, **options: Any) -> Any:
        reads.append(self.base_url)
        return models(self, **options)

    monkeypatch.setattr(LlamaCppClient, "models", counted)
    backend = LlamaCppServerBackend(q4_k_m_server.base_url)
    with InMemoryTelemetry() as t, InferenceEngine(backend) as engine:
        assert backend.span_attributes[names.MODEL_FILE_TYPE] == "Q4_K_M"
        engine.generate(_request(max_tokens=3))
        engine.generate(_request("Once more.", max_tokens=2, stream=True))
        with pytest.raises(ContextOverflowError):
            engine.generate(_request("hello " * 400))  # the server's context is 256
        spans = _request_spans(t)
        phase_spans = [s for s in t.spans() if s not in spans]
    assert reads == [backend.url], "read once, at start(), not per request"
    assert len(spans) == 3 and spans[2].status.status_code.name == "ERROR"
    for span in spans:
        attributes = dict(span.attributes or {})
        assert span.name == "chat tiny256-q4"
        assert attributes[names.MODEL_FILE_TYPE] == "Q4_K_M"
        # The server reports its tensors' bytes: the file less its header and vocabulary.
        assert attributes[names.MODEL_SIZE] == facts.n_bytes < served.stat().st_size
        assert attributes[names.MODEL_PARAMETERS] == facts.n_elements
    assert phase_spans and all(names.MODEL_FILE_TYPE not in (s.attributes or {}) for s in phase_spans)


def test_a_named_model_gets_its_facts_and_only_its_own(q4_k_m_server: Any) -> None:
    """Naming the served model still reads its facts; naming another (a router's) lends none of these."""
    with LlamaCppClient(q4_k_m_server.base_url) as client:
        served_id = client.model_id()
    named = LlamaCppServerBackend(q4_k_m_server.base_url, model=served_id)
    other = LlamaCppServerBackend(q4_k_m_server.base_url, model="some-other-model")
    for backend in (named, other):
        backend.start()
        backend.shutdown()
    assert named.span_attributes[names.MODEL_FILE_TYPE] == "Q4_K_M" and named.model_name == "tiny256-q4"
    assert other.span_attributes == {} and other.model_name == "some-other-model"


class _OldServerHandler(BaseHTTPRequestHandler):
    """A STAND-IN for a llama.cpp server build that says less: ``/health``, and ``/v1/models`` without ``meta``
    (``/no-meta``) or not at all (``/no-models``); the path's first segment picks which."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        scenario, _, path = self.path.strip("/").partition("/")
        if path == "health":
            self._send(200, b'{"status": "ok"}')
        elif path == "v1/models" and scenario == "no-meta":
            self._send(200, b'{"object": "list", "data": [{"id": "/models/old-build.gguf", "object": "model"}]}')
        else:
            self._send(404, b'{"error": {"code": 404, "message": "File Not Found"}}')

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def old_server() -> Iterator[str]:
    """The stand-in's base URL (append a scenario)."""
    with serving(_OldServerHandler) as url:
        yield url


def test_a_server_that_does_not_say_still_starts(old_server: str, caplog: pytest.LogCaptureFixture) -> None:
    """No meta: the name, no facts. No /v1/models: a warning and no facts; neither fails start()."""
    without_meta = LlamaCppServerBackend(f"{old_server}/no-meta", retries=0)
    without_meta.start()
    without_meta.shutdown()
    assert without_meta.span_attributes == {} and without_meta.model_name == "old-build"
    with caplog.at_level("WARNING", logger="llamatelemetry.llama_cpp"):
        for model in (None, "named"):
            without_models = LlamaCppServerBackend(f"{old_server}/no-models", retries=0, model=model)
            without_models.start()
            without_models.shutdown()
            assert without_models.span_attributes == {} and without_models.model_name == model
    assert [r.getMessage() for r in caplog.records].count(
        f"The server at {old_server}/no-models did not list its model (GET /v1/models: HTTP 404: File Not Found); "
        "spans go without the model's facts.") == 2
