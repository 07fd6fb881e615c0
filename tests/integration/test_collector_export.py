"""What init() sends really crosses the wire: a rotel collector forwards to a gRPC sink we read.

The backend here is a small in-test class: these tests are about the telemetry path (OTLP over
gRPC and HTTP, per-signal endpoints, resource, metrics buckets), not about a model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamatelemetry
from llamatelemetry.inference import InferenceEngine, InferenceRequest, InferenceResult, SamplingParams
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.metrics import DURATION_BUCKETS, SERVER_TTFT_BUCKETS, TOKEN_USAGE_BUCKETS

otlp_sink = pytest.importorskip("otlp_sink")

SPAN_KIND_INTERNAL = 1
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


class WordBackend:
    """Test backend: returns the first max_tokens words of the prompt, with honest counts."""

    provider_name = "llama_cpp"
    model_name = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    server_address = "127.0.0.1"
    server_port = 8090
    span_kind = "client"

    def start(self) -> None: ...
    def shutdown(self) -> None: ...

    def generate(self, request: InferenceRequest) -> InferenceResult:
        if "explode" in request.prompt_text:
            raise ConnectionRefusedError("llama.cpp server at 127.0.0.1:8090 refused the connection")
        words = request.prompt_text.split()
        out = words[: request.max_tokens]
        return InferenceResult(text=" ".join(out), input_tokens=len(words), output_tokens=len(out),
                               cached_input_tokens=1, ttft_ms=12.5, total_ms=40.0, decode_tps=80.0,
                               finish_reason="length" if len(out) == request.max_tokens else "stop",
                               model="SmolLM2-135M-Instruct.Q4_1.gguf", response_id="cmpl-1",
                               request_id=request.request_id)


def _request(text: str = "the quick brown fox jumps", **kwargs: Any) -> InferenceRequest:
    return InferenceRequest(messages=[{"role": "user", "content": text}], max_tokens=3,
                            sampling=SamplingParams(temperature=0.0, top_k=20, seed=7), **kwargs)


def _run_workload() -> InferenceResult:
    @llamatelemetry.workflow("answer-questions")
    def answer() -> InferenceResult:
        with InferenceEngine(WordBackend()) as engine:
            return engine.generate(_request(conversation_id="conv-9"))

    return answer()


def _assert_chat_span(span: Any, result: InferenceResult) -> None:
    assert span.name == "chat SmolLM2-135M-Instruct.Q4_1"
    assert span.kind == SPAN_KIND_CLIENT
    a = span.attributes
    assert a[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert a[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    assert a[gen_ai.GEN_AI_REQUEST_MODEL] == "SmolLM2-135M-Instruct.Q4_1", "a model name, not a file path"
    assert a[gen_ai.SERVER_ADDRESS] == "127.0.0.1" and a[gen_ai.SERVER_PORT] == 8090
    assert a[gen_ai.GEN_AI_REQUEST_TEMPERATURE] == 0.0
    assert a[gen_ai.GEN_AI_REQUEST_TOP_K] == 20.0 and isinstance(a[gen_ai.GEN_AI_REQUEST_TOP_K], float)
    assert a[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] == 3 and a[gen_ai.GEN_AI_REQUEST_SEED] == 7
    assert a[gen_ai.GEN_AI_CONVERSATION_ID] == "conv-9"
    assert a[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == 5 and a[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert a[gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1
    assert a[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] == ["length"]
    assert a[gen_ai.GEN_AI_RESPONSE_ID] == "cmpl-1"
    assert a["llamatelemetry.response.time_to_first_token"] == pytest.approx(0.0125)
    assert a["llamatelemetry.request.id"] == result.request_id
    assert gen_ai.GEN_AI_INPUT_MESSAGES not in a and gen_ai.GEN_AI_OUTPUT_MESSAGES not in a, "no content by default"
    assert "gen_ai.system" not in a, "deprecated names only behind the switch"


def _assert_metrics(sink: Any) -> None:
    duration = sink.wait_for_metrics(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
    assert duration[0].kind == "histogram" and duration[0].unit == "s"
    assert tuple(duration[0].explicit_bounds) == DURATION_BUCKETS
    assert duration[0].attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    usage = sink.wait_for_metrics(gen_ai.GEN_AI_CLIENT_TOKEN_USAGE)
    assert tuple(usage[0].explicit_bounds) == TOKEN_USAGE_BUCKETS
    by_type = {p.attributes[gen_ai.GEN_AI_TOKEN_TYPE]: p.sum for p in usage}
    assert by_type == {"input": 5, "output": 3}


def test_grpc_export_through_a_real_collector(otlp_collector: tuple[Any, Any]) -> None:
    rotel, sink = otlp_collector
    llamatelemetry.init(service_name="grpc-test", otlp_endpoint=rotel.grpc_endpoint, service_version="9.9")
    result = _run_workload()
    llamatelemetry.shutdown()  # flushes: no force_flush needed
    spans = {s.name: s for s in sink.wait_for_spans(count=2)}
    chat, workflow = spans["chat SmolLM2-135M-Instruct.Q4_1"], spans["answer-questions"]
    _assert_chat_span(chat, result)
    assert chat.parent_span_id == workflow.span_id and chat.trace_id == workflow.trace_id
    assert workflow.kind == SPAN_KIND_INTERNAL
    assert workflow.attributes["llamatelemetry.workflow.name"] == "answer-questions"
    assert chat.resource["service.name"] == "grpc-test" and chat.resource["service.version"] == "9.9"
    assert chat.scope == "llamatelemetry"
    _assert_metrics(sink)


def test_http_export_configured_by_otel_variables(otlp_collector: tuple[Any, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rotel, sink = otlp_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rotel.http_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "http-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,host.name=runner-1")
    telemetry = llamatelemetry.init()
    assert telemetry.settings.traces.endpoint == f"{rotel.http_endpoint}/v1/traces"
    result = _run_workload()
    llamatelemetry.shutdown()
    chat = next(s for s in sink.wait_for_spans(count=2) if s.name.startswith("chat"))
    _assert_chat_span(chat, result)
    assert chat.resource["service.name"] == "http-test"
    assert chat.resource["deployment.environment.name"] == "ci"
    _assert_metrics(sink)


def test_traces_and_metrics_go_to_their_own_endpoints(tmp_path: Path) -> None:
    if otlp_sink.rotel_binary() is None:
        pytest.skip("rotel not installed (pip install rotel)")
    with otlp_sink.running_collector(tmp_path / "t") as (traces_rotel, traces_sink), \
            otlp_sink.running_collector(tmp_path / "m") as (metrics_rotel, metrics_sink):
        llamatelemetry.init(service_name="split", traces_endpoint=traces_rotel.grpc_endpoint,
                            metrics_endpoint=f"{metrics_rotel.http_endpoint}/v1/metrics")
        _run_workload()
        llamatelemetry.shutdown()
        traces_sink.wait_for_spans(count=2)
        metrics_sink.wait_for_metrics(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
        assert not traces_sink.metric_points(), "metrics must not reach the traces endpoint"
        assert not metrics_sink.spans(), "spans must not reach the metrics endpoint"


def test_errors_and_in_process_server_metrics_arrive(otlp_collector: tuple[Any, Any]) -> None:
    rotel, sink = otlp_collector

    class InProcess(WordBackend):
        span_kind = "internal"

    llamatelemetry.init(service_name="errors", otlp_endpoint=rotel.grpc_endpoint, capture_content="SPAN_ONLY")
    with InferenceEngine(InProcess()) as engine:
        engine.generate(_request("hello there world"))
        with pytest.raises(ConnectionRefusedError):
            engine.generate(_request("please explode now"))
    llamatelemetry.shutdown()
    spans = sink.wait_for_spans(count=2)
    failed = next(s for s in spans if s.status_code == STATUS_ERROR)
    assert failed.kind == SPAN_KIND_INTERNAL
    assert failed.attributes[gen_ai.ERROR_TYPE] == "ConnectionRefusedError"
    assert "refused" in failed.status_message
    assert [name for name, _ in failed.events] == ["exception"]
    ok = next(s for s in spans if s.status_code != STATUS_ERROR)
    assert '"content": "hello there world"' in ok.attributes[gen_ai.GEN_AI_INPUT_MESSAGES], "opted in"
    ttft = sink.wait_for_metrics(gen_ai.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN)
    assert tuple(ttft[0].explicit_bounds) == SERVER_TTFT_BUCKETS
    durations = sink.wait_for_metrics(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
    assert any(p.attributes.get(gen_ai.ERROR_TYPE) == "ConnectionRefusedError" for p in durations)


def test_streaming_generator_span_arrives_after_the_stream_ends(otlp_collector: tuple[Any, Any]) -> None:
    rotel, sink = otlp_collector
    llamatelemetry.init(service_name="stream", otlp_endpoint=rotel.grpc_endpoint)

    @llamatelemetry.trace(name="stream tokens")
    def tokens() -> Iterator[str]:
        yield from ("a", "b", "c")

    stream = tokens()
    first = next(stream)
    stream.close()
    assert first == "a"
    llamatelemetry.shutdown()
    span = sink.wait_for_spans(count=1)[0]
    assert span.attributes["llamatelemetry.stream.chunks"] == 1
    assert span.attributes["llamatelemetry.stream.closed_early"] is True
