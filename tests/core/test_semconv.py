"""Tests of ``llamatelemetry.semconv``: names, buckets, span attributes, content capture and compatibility."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan

import llamatelemetry
from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry.inference.types import SamplingParams
from llamatelemetry.plugins import hookimpl
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as names
from llamatelemetry.semconv import metrics as semconv_metrics
from llamatelemetry.semconv.content import (
    ENV_CAPTURE_CONTENT,
    CaptureMode,
    parse_capture_mode,
    record_content,
    to_semconv_messages,
)
from llamatelemetry.semconv.mapping import model_display_name, set_gen_ai_attrs, span_name, with_compat
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

SECRET = "TOP-SECRET-PROMPT-51c2"
EMAIL = "alice@example.com"


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryTelemetry]:
    monkeypatch.delenv("LLAMATELEMETRY_SEMCONV_COMPAT", raising=False)
    monkeypatch.delenv(ENV_CAPTURE_CONTENT, raising=False)
    with fresh_plugin_manager(), InMemoryTelemetry() as t:
        yield t


def finished(t: InMemoryTelemetry, name: str) -> ReadableSpan:
    return t.span(name)


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# ----------------------------------------------------------------------------- names (DESIGN section 3)


@pytest.mark.parametrize(
    ("constant", "expected"),
    [
        (gen_ai.GEN_AI_OPERATION_NAME, "gen_ai.operation.name"),
        (gen_ai.GEN_AI_PROVIDER_NAME, "gen_ai.provider.name"),
        (gen_ai.GEN_AI_REQUEST_MODEL, "gen_ai.request.model"),
        (gen_ai.GEN_AI_RESPONSE_MODEL, "gen_ai.response.model"),
        (gen_ai.GEN_AI_RESPONSE_ID, "gen_ai.response.id"),
        (gen_ai.GEN_AI_REQUEST_TEMPERATURE, "gen_ai.request.temperature"),
        (gen_ai.GEN_AI_REQUEST_TOP_P, "gen_ai.request.top_p"),
        (gen_ai.GEN_AI_REQUEST_TOP_K, "gen_ai.request.top_k"),
        (gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY, "gen_ai.request.frequency_penalty"),
        (gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY, "gen_ai.request.presence_penalty"),
        (gen_ai.GEN_AI_REQUEST_MAX_TOKENS, "gen_ai.request.max_tokens"),
        (gen_ai.GEN_AI_REQUEST_SEED, "gen_ai.request.seed"),
        (gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES, "gen_ai.request.stop_sequences"),
        (gen_ai.GEN_AI_REQUEST_STREAM, "gen_ai.request.stream"),
        (gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, "gen_ai.response.finish_reasons"),
        (gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, "gen_ai.response.time_to_first_chunk"),
        (gen_ai.GEN_AI_USAGE_INPUT_TOKENS, "gen_ai.usage.input_tokens"),
        (gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, "gen_ai.usage.output_tokens"),
        (gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, "gen_ai.usage.cache_read.input_tokens"),
        (gen_ai.GEN_AI_CONVERSATION_ID, "gen_ai.conversation.id"),
        (gen_ai.GEN_AI_TOKEN_TYPE, "gen_ai.token.type"),
        (gen_ai.SERVER_ADDRESS, "server.address"),
        (gen_ai.SERVER_PORT, "server.port"),
        (gen_ai.ERROR_TYPE, "error.type"),
        (gen_ai.GEN_AI_INPUT_MESSAGES, "gen_ai.input.messages"),
        (gen_ai.GEN_AI_OUTPUT_MESSAGES, "gen_ai.output.messages"),
        (gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS, "gen_ai.system_instructions"),
        (gen_ai.GEN_AI_CLIENT_INFERENCE_OPERATION_DETAILS, "gen_ai.client.inference.operation.details"),
        (gen_ai.GEN_AI_CLIENT_OPERATION_DURATION, "gen_ai.client.operation.duration"),
        (gen_ai.GEN_AI_CLIENT_TOKEN_USAGE, "gen_ai.client.token.usage"),
        (gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "gen_ai.client.operation.time_to_first_chunk"),
        (gen_ai.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK, "gen_ai.client.operation.time_per_output_chunk"),
        (gen_ai.GEN_AI_SERVER_REQUEST_DURATION, "gen_ai.server.request.duration"),
        (gen_ai.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "gen_ai.server.time_to_first_token"),
        (gen_ai.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, "gen_ai.server.time_per_output_token"),
    ],
)
def test_gen_ai_names_are_v1_41(constant: str, expected: str) -> None:
    assert constant == expected


def test_semconv_version_and_schema_url() -> None:
    assert gen_ai.SEMCONV_VERSION == "1.41.0"
    assert gen_ai.SCHEMA_URL == "https://opentelemetry.io/schemas/1.41.0"


def test_well_known_values() -> None:
    assert (gen_ai.OPERATION_CHAT, gen_ai.OPERATION_TEXT_COMPLETION, gen_ai.OPERATION_EMBEDDINGS) == (
        "chat", "text_completion", "embeddings")
    assert (gen_ai.PROVIDER_LLAMA_CPP, gen_ai.PROVIDER_TRANSFORMERS, gen_ai.PROVIDER_UNSLOTH) == (
        "llama_cpp", "transformers", "unsloth")
    assert (gen_ai.TOKEN_TYPE_INPUT, gen_ai.TOKEN_TYPE_OUTPUT) == ("input", "output")
    assert (gen_ai.FINISH_REASON_STOP, gen_ai.FINISH_REASON_LENGTH) == ("stop", "length")


def test_deprecated_names_are_only_aliases() -> None:
    assert gen_ai.DEPRECATED_ALIASES == {
        "gen_ai.system": "gen_ai.provider.name",
        "gen_ai.usage.prompt_tokens": "gen_ai.usage.input_tokens",
        "gen_ai.usage.completion_tokens": "gen_ai.usage.output_tokens",
    }
    current = {value for key, value in vars(gen_ai).items() if key.startswith("GEN_AI_")
               and not key.endswith("_DEPRECATED") and isinstance(value, str)}
    assert not current & set(gen_ai.DEPRECATED_ALIASES)
    assert all(old.startswith("llm.") for old in gen_ai.LEGACY_LLM_ALIASES)
    assert set(gen_ai.LEGACY_LLM_ALIASES.values()) <= current


def test_constants_are_in_their_namespaces() -> None:
    gen_ai_values = [v for k, v in vars(gen_ai).items() if k.startswith("GEN_AI_") and isinstance(v, str)]
    assert gen_ai_values and all(v.startswith("gen_ai.") for v in gen_ai_values)
    assert len(set(gen_ai_values)) == len(gen_ai_values)
    ours = {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    ours.pop("NAMESPACE")
    standard = {ours.pop("CODE_FUNCTION_NAME")}
    assert standard == {"code.function.name"}
    # Attribute values, not names: what llamatelemetry.phase.name holds.
    assert (ours.pop("PHASE_PREFILL"), ours.pop("PHASE_DECODE")) == ("prefill", "decode")
    assert all(v.startswith("llamatelemetry.") for v in ours.values()), ours
    assert len(set(ours.values())) == len(ours)
    assert names.STREAM_CHUNKS == "llamatelemetry.stream.chunks"
    assert names.STREAM_CLOSED_EARLY == "llamatelemetry.stream.closed_early"


# ----------------------------------------------------------------------------- metric buckets


def test_duration_buckets_exact() -> None:
    assert semconv_metrics.DURATION_BUCKETS == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


def test_token_usage_buckets_exact() -> None:
    assert semconv_metrics.TOKEN_USAGE_BUCKETS == (
        1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


def test_server_buckets_exact() -> None:
    assert semconv_metrics.SERVER_TTFT_BUCKETS == (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
    assert semconv_metrics.SERVER_TPOT_BUCKETS == (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)


@pytest.mark.parametrize(
    ("instrument", "metric_name", "unit", "buckets"),
    [
        ("operation_duration", "gen_ai.client.operation.duration", "s", semconv_metrics.DURATION_BUCKETS),
        ("token_usage", "gen_ai.client.token.usage", "{token}", semconv_metrics.TOKEN_USAGE_BUCKETS),
        ("time_to_first_chunk", "gen_ai.client.operation.time_to_first_chunk", "s",
         semconv_metrics.DURATION_BUCKETS),
        ("time_per_output_chunk", "gen_ai.client.operation.time_per_output_chunk", "s",
         semconv_metrics.DURATION_BUCKETS),
        ("server_request_duration", "gen_ai.server.request.duration", "s", semconv_metrics.DURATION_BUCKETS),
        ("server_time_to_first_token", "gen_ai.server.time_to_first_token", "s",
         semconv_metrics.SERVER_TTFT_BUCKETS),
        ("server_time_per_output_token", "gen_ai.server.time_per_output_token", "s",
         semconv_metrics.SERVER_TPOT_BUCKETS),
    ],
)
def test_histograms_use_advisory_buckets(telemetry: InMemoryTelemetry, instrument: str, metric_name: str,
                                         unit: str, buckets: tuple[float, ...]) -> None:
    assert telemetry.telemetry is not None
    histogram = getattr(telemetry.telemetry.metrics, instrument)
    histogram.record(3, {gen_ai.GEN_AI_OPERATION_NAME: "chat"})
    points = telemetry.metric_points(metric_name)
    assert len(points) == 1
    point = points[0]
    assert point.unit == unit
    assert point.attributes == {gen_ai.GEN_AI_OPERATION_NAME: "chat"}
    assert tuple(point.point.explicit_bounds) == tuple(float(b) for b in buckets)
    assert point.value == 1


# ----------------------------------------------------------------------------- model names and span names


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("/models/llama-3-8b.Q4_K_M.gguf", "llama-3-8b.Q4_K_M"),
        ("llama-3-8b.Q4_K_M.gguf", "llama-3-8b.Q4_K_M"),
        ("./tiny.GGUF", "tiny"),
        ("../weights/phi-2.bin", "phi-2"),
        ("~/models/qwen.safetensors", "qwen"),
        ("/kaggle/input/gemma/gemma-2b-it-q8_0.gguf", "gemma-2b-it-q8_0"),
        ("/home/user/models/Llama-3-8B/", "Llama-3-8B"),
        (Path("/x/y/model.safetensors"), "model"),
        ("org/model", "org/model"),
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("unsloth/Llama-3.2-1B-Instruct-GGUF", "unsloth/Llama-3.2-1B-Instruct-GGUF"),
        ("tiny", "tiny"),
        (None, None),
    ],
)
def test_model_display_name(model: Any, expected: str | None) -> None:
    assert model_display_name(model) == expected


def test_model_display_name_windows_path() -> None:
    assert model_display_name("C:\\models\\llama-3-8b.gguf") == "llama-3-8b"
    assert model_display_name("D:\\hf\\Llama-3-8B\\") == "Llama-3-8B"


def test_span_name() -> None:
    assert span_name("chat", "llama-3-8b") == "chat llama-3-8b"
    assert span_name("text_completion", None) == "text_completion"
    assert span_name("embeddings", "") == "embeddings"


# ----------------------------------------------------------------------------- set_gen_ai_attrs


def full_request() -> InferenceRequest:
    return InferenceRequest(
        messages=[{"role": "system", "content": SECRET}, {"role": "user", "content": SECRET}],
        max_tokens=64,
        sampling=SamplingParams(temperature=0.2, top_p=0.9, top_k=40, seed=7, stop=["\n\n", "END"],
                                frequency_penalty=0.5),
        model="/models/llama-3-8b.Q4_K_M.gguf",
        stream=True,
        conversation_id="conv-1",
        request_id="req-1",
    )


def test_set_gen_ai_attrs_on_sdk_span(telemetry: InMemoryTelemetry) -> None:
    with llamatelemetry.get_tracer().start_as_current_span("chat llama-3-8b.Q4_K_M") as span:
        set_gen_ai_attrs(span, full_request(), provider="llama_cpp", server_address="127.0.0.1", server_port=8090)
    attributes = attrs_of(finished(telemetry, "chat llama-3-8b.Q4_K_M"))
    assert attributes[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    assert attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "llama-3-8b.Q4_K_M"
    assert attributes[gen_ai.SERVER_ADDRESS] == "127.0.0.1"
    assert attributes[gen_ai.SERVER_PORT] == 8090 and type(attributes[gen_ai.SERVER_PORT]) is int
    max_tokens = attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS]
    assert max_tokens == 64 and type(max_tokens) is int
    assert attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] == pytest.approx(0.2)
    assert attributes[gen_ai.GEN_AI_REQUEST_TOP_P] == pytest.approx(0.9)
    # v1.41: top_k is a double.
    assert attributes[gen_ai.GEN_AI_REQUEST_TOP_K] == 40.0
    assert type(attributes[gen_ai.GEN_AI_REQUEST_TOP_K]) is float
    assert attributes[gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY] == pytest.approx(0.5)
    assert gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY not in attributes
    assert attributes[gen_ai.GEN_AI_REQUEST_SEED] == 7 and type(attributes[gen_ai.GEN_AI_REQUEST_SEED]) is int
    assert tuple(attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES]) == ("\n\n", "END")
    assert attributes[gen_ai.GEN_AI_REQUEST_STREAM] is True
    assert attributes[gen_ai.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert attributes[names.REQUEST_ID] == "req-1"
    assert attributes[names.REQUEST_REPEAT_PENALTY] == pytest.approx(1.1)
    # Request attributes never carry content, nor deprecated names by default.
    assert not any(SECRET in str(value) for value in attributes.values())
    for key in (gen_ai.GEN_AI_INPUT_MESSAGES, gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS, *gen_ai.DEPRECATED_ALIASES,
                *gen_ai.LEGACY_LLM_ALIASES):
        assert key not in attributes


def test_set_gen_ai_attrs_types_for_every_sampling_number(telemetry: InMemoryTelemetry) -> None:
    request = InferenceRequest(messages=[{"role": "user", "content": "x"}],
                               sampling=SamplingParams(temperature=0, top_p=1, top_k=0, presence_penalty=-1))
    with llamatelemetry.get_tracer().start_as_current_span("s") as span:
        set_gen_ai_attrs(span, request)
    attributes = attrs_of(finished(telemetry, "s"))
    for key, value in ((gen_ai.GEN_AI_REQUEST_TEMPERATURE, 0.0), (gen_ai.GEN_AI_REQUEST_TOP_P, 1.0),
                       (gen_ai.GEN_AI_REQUEST_TOP_K, 0.0), (gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY, -1.0)):
        assert attributes[key] == value  # zero values are facts, not omitted
        assert type(attributes[key]) is float, key
    assert gen_ai.GEN_AI_REQUEST_STREAM not in attributes
    assert gen_ai.GEN_AI_REQUEST_SEED not in attributes
    assert gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES not in attributes
    assert gen_ai.GEN_AI_CONVERSATION_ID not in attributes
    assert gen_ai.GEN_AI_REQUEST_MODEL not in attributes


def test_set_gen_ai_attrs_explicit_operation_and_model(telemetry: InMemoryTelemetry) -> None:
    request = InferenceRequest(messages=[{"role": "user", "content": "x"}], operation="text_completion",
                               model="ignored/model")
    with llamatelemetry.get_tracer().start_as_current_span("a") as span:
        set_gen_ai_attrs(span, request, model="/w/override.gguf")
    with llamatelemetry.get_tracer().start_as_current_span("b") as span:
        set_gen_ai_attrs(span, None, operation="embeddings", provider="transformers", model="org/embedder")
    a, b = attrs_of(finished(telemetry, "a")), attrs_of(finished(telemetry, "b"))
    assert a[gen_ai.GEN_AI_OPERATION_NAME] == "text_completion"
    assert a[gen_ai.GEN_AI_REQUEST_MODEL] == "override"
    assert b == {gen_ai.GEN_AI_OPERATION_NAME: "embeddings", gen_ai.GEN_AI_PROVIDER_NAME: "transformers",
                 gen_ai.GEN_AI_REQUEST_MODEL: "org/embedder"}


def test_set_gen_ai_attrs_skips_non_recording_span(telemetry: InMemoryTelemetry,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    span = llamatelemetry.get_tracer().start_span("ended")
    span.end()
    assert not span.is_recording()
    with caplog.at_level(logging.DEBUG, logger="opentelemetry"):
        set_gen_ai_attrs(span, full_request(), provider="llama_cpp")
        set_gen_ai_attrs(trace_api.INVALID_SPAN, full_request(), provider="llama_cpp")
    # The SDK warns on every set on an ended span: no warning means nothing was attempted.
    assert "ended span" not in caplog.text
    assert attrs_of(finished(telemetry, "ended")) == {}


# ----------------------------------------------------------------------------- compatibility switch


def base_attrs() -> dict[str, Any]:
    return {
        gen_ai.GEN_AI_OPERATION_NAME: "chat",
        gen_ai.GEN_AI_PROVIDER_NAME: "llama_cpp",
        gen_ai.GEN_AI_REQUEST_MODEL: "tiny",
        gen_ai.GEN_AI_USAGE_INPUT_TOKENS: 12,
        gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: 34,
        gen_ai.GEN_AI_REQUEST_TOP_K: 40.0,
    }


def test_with_compat_deprecated() -> None:
    result = with_compat(base_attrs(), frozenset({"deprecated"}))
    assert result == base_attrs() | {
        "gen_ai.system": "llama_cpp", "gen_ai.usage.prompt_tokens": 12, "gen_ai.usage.completion_tokens": 34}


def test_with_compat_llm() -> None:
    result = with_compat(base_attrs(), frozenset({"llm"}))
    assert result == base_attrs() | {
        "llm.request.type": "chat", "llm.vendor": "llama_cpp", "llm.request.model": "tiny",
        "llm.usage.prompt_tokens": 12, "llm.usage.completion_tokens": 34, "llm.top_k": 40.0}
    assert "gen_ai.system" not in result


def test_with_compat_both() -> None:
    result = with_compat(base_attrs(), frozenset({"deprecated", "llm"}))
    assert result["gen_ai.system"] == result["llm.vendor"] == "llama_cpp"


def test_with_compat_only_copies_present_names() -> None:
    assert with_compat({gen_ai.GEN_AI_OPERATION_NAME: "chat"}, frozenset({"deprecated"})) == {
        gen_ai.GEN_AI_OPERATION_NAME: "chat"}


def test_with_compat_default_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    llamatelemetry.shutdown()
    assert with_compat(base_attrs(), frozenset()) == base_attrs()
    assert with_compat(base_attrs()) == base_attrs()  # no telemetry: no switch
    monkeypatch.delenv("LLAMATELEMETRY_SEMCONV_COMPAT", raising=False)
    with fresh_plugin_manager(), InMemoryTelemetry():
        assert with_compat(base_attrs()) == base_attrs()


@pytest.mark.parametrize(("option", "expected_key"), [("deprecated", "gen_ai.system"), ("llm", "llm.vendor")])
def test_compat_switch_from_init_reaches_spans(monkeypatch: pytest.MonkeyPatch, option: str,
                                               expected_key: str) -> None:
    monkeypatch.delenv("LLAMATELEMETRY_SEMCONV_COMPAT", raising=False)
    with fresh_plugin_manager(), InMemoryTelemetry(semconv_compat=option) as t:
        with llamatelemetry.get_tracer().start_as_current_span("compat") as span:
            set_gen_ai_attrs(span, full_request(), provider="llama_cpp")
        attributes = attrs_of(t.span("compat"))
    assert attributes[expected_key] == "llama_cpp"
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"


# ----------------------------------------------------------------------------- capture modes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NO_CONTENT", CaptureMode.NO_CONTENT),
        ("no_content", CaptureMode.NO_CONTENT),
        ("SPAN_ONLY", CaptureMode.SPAN_ONLY),
        ("Span_Only", CaptureMode.SPAN_ONLY),
        (" event_only ", CaptureMode.EVENT_ONLY),
        ("EVENT_ONLY", CaptureMode.EVENT_ONLY),
        ("span_and_event", CaptureMode.SPAN_AND_EVENT),
        ("SPAN_AND_EVENT", CaptureMode.SPAN_AND_EVENT),
        ("true", CaptureMode.SPAN_ONLY),
        ("TRUE", CaptureMode.SPAN_ONLY),
        ("1", CaptureMode.SPAN_ONLY),
        ("false", CaptureMode.NO_CONTENT),
        ("False", CaptureMode.NO_CONTENT),
        ("0", CaptureMode.NO_CONTENT),
        ("", CaptureMode.NO_CONTENT),
        (True, CaptureMode.SPAN_ONLY),
        (False, CaptureMode.NO_CONTENT),
        (None, CaptureMode.NO_CONTENT),
        (CaptureMode.EVENT_ONLY, CaptureMode.EVENT_ONLY),
    ],
)
def test_parse_capture_mode(value: Any, expected: CaptureMode) -> None:
    assert parse_capture_mode(value) is expected


@pytest.mark.parametrize("junk", ["yes", "SPAN", "span-only", "2", "NO CONTENT", "everything"])
def test_parse_capture_mode_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_capture_mode(junk)
    message = str(excinfo.value)
    assert ENV_CAPTURE_CONTENT in message
    assert repr(junk) in message
    for mode in ("NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT"):
        assert mode in message


def test_parse_capture_mode_names_its_source() -> None:
    with pytest.raises(ValueError, match=r"init\(capture_content=\.\.\.\)"):
        parse_capture_mode("junk", source="init(capture_content=...)")


def test_capture_mode_targets() -> None:
    table = {mode: (mode.on_span, mode.on_event) for mode in CaptureMode}
    assert table == {CaptureMode.NO_CONTENT: (False, False), CaptureMode.SPAN_ONLY: (True, False),
                     CaptureMode.EVENT_ONLY: (False, True), CaptureMode.SPAN_AND_EVENT: (True, True)}


def test_init_defaults_to_no_content(telemetry: InMemoryTelemetry) -> None:
    assert telemetry.telemetry is not None
    assert telemetry.telemetry.capture_content is CaptureMode.NO_CONTENT


# ----------------------------------------------------------------------------- record_content

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi"},
    {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                 {"type": "image_url", "image_url": {"url": "x"}}]},
]
EXPECTED_SYSTEM = [{"type": "text", "content": "You are terse."}]
EXPECTED_INPUT = [
    {"role": "user", "parts": [{"type": "text", "content": "Hello"}]},
    {"role": "assistant", "parts": [{"type": "text", "content": "Hi"}]},
    {"role": "user", "parts": [{"type": "text", "content": "Describe"}, {"type": "image_url"}]},
]
EXPECTED_OUTPUT = [{"role": "assistant", "parts": [{"type": "text", "content": "Bye"}], "finish_reason": "stop"}]
CONTENT_KEYS = (gen_ai.GEN_AI_INPUT_MESSAGES, gen_ai.GEN_AI_OUTPUT_MESSAGES, gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS)


def record(t: InMemoryTelemetry, mode: CaptureMode, **kwargs: Any) -> ReadableSpan:
    with llamatelemetry.get_tracer().start_as_current_span("content") as span:
        record_content(span, mode, **kwargs)
    return t.span("content")


def content_events(span: ReadableSpan) -> list[Any]:
    return [e for e in span.events if e.name == gen_ai.GEN_AI_CLIENT_INFERENCE_OPERATION_DETAILS]


def test_to_semconv_messages_splits_system() -> None:
    system, inputs = to_semconv_messages(CHAT)
    assert system == EXPECTED_SYSTEM
    assert inputs == EXPECTED_INPUT


def test_no_content_records_nothing(telemetry: InMemoryTelemetry) -> None:
    class Counter:
        calls = 0

        @hookimpl
        def llamatelemetry_redact_messages(self, messages: list[dict[str, Any]], kind: str) -> None:
            Counter.calls += 1

    with fresh_plugin_manager(Counter()):
        span = record(telemetry, CaptureMode.NO_CONTENT, input_messages=CHAT, output_text="Bye", finish_reason="stop")
    attributes = attrs_of(span)
    for key in CONTENT_KEYS:
        assert key not in attributes
    assert span.events == ()
    assert Counter.calls == 0  # content is not even prepared


def test_span_only(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.SPAN_ONLY, input_messages=CHAT, output_text="Bye", finish_reason="stop")
    attributes = attrs_of(span)
    assert json.loads(attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS]) == EXPECTED_SYSTEM
    inputs = json.loads(attributes[gen_ai.GEN_AI_INPUT_MESSAGES])
    assert inputs == EXPECTED_INPUT
    assert all(message["role"] != "system" for message in inputs)
    assert "You are terse." not in attributes[gen_ai.GEN_AI_INPUT_MESSAGES]
    assert json.loads(attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]) == EXPECTED_OUTPUT
    assert content_events(span) == []


def test_event_only(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.EVENT_ONLY, input_messages=CHAT, output_text="Bye", finish_reason="stop")
    attributes = attrs_of(span)
    for key in CONTENT_KEYS:
        assert key not in attributes
    events = content_events(span)
    assert len(events) == 1
    event_attributes = dict(events[0].attributes or {})
    assert json.loads(event_attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS]) == EXPECTED_SYSTEM
    assert json.loads(event_attributes[gen_ai.GEN_AI_INPUT_MESSAGES]) == EXPECTED_INPUT
    assert json.loads(event_attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]) == EXPECTED_OUTPUT


def test_span_and_event(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.SPAN_AND_EVENT, input_messages=CHAT, output_text="Bye",
                  finish_reason="stop")
    attributes = attrs_of(span)
    events = content_events(span)
    assert len(events) == 1
    for key in CONTENT_KEYS:
        assert attributes[key] == dict(events[0].attributes or {})[key]


def test_no_system_messages_no_system_instructions(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.SPAN_ONLY, input_messages=[{"role": "user", "content": "Hello"}])
    attributes = attrs_of(span)
    assert gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS not in attributes
    assert gen_ai.GEN_AI_OUTPUT_MESSAGES not in attributes
    assert json.loads(attributes[gen_ai.GEN_AI_INPUT_MESSAGES]) == [EXPECTED_INPUT[0]]


def test_output_only_without_finish_reason(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.SPAN_ONLY, output_text="Bye")
    attributes = attrs_of(span)
    assert json.loads(attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Bye"}]}]
    assert gen_ai.GEN_AI_INPUT_MESSAGES not in attributes


def test_nothing_given_records_no_event(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.SPAN_AND_EVENT)
    assert content_events(span) == []
    assert not any(key in attrs_of(span) for key in CONTENT_KEYS)


def test_non_ascii_content_kept_readable(telemetry: InMemoryTelemetry) -> None:
    span = record(telemetry, CaptureMode.SPAN_ONLY, input_messages=[{"role": "user", "content": "¿Qué tal? 日本"}])
    assert "¿Qué tal? 日本" in attrs_of(span)[gen_ai.GEN_AI_INPUT_MESSAGES]


def test_record_content_skips_non_recording_span(telemetry: InMemoryTelemetry) -> None:
    class Counter:
        calls = 0

        @hookimpl
        def llamatelemetry_redact_messages(self, messages: list[dict[str, Any]], kind: str) -> None:
            Counter.calls += 1

    span = llamatelemetry.get_tracer().start_span("ended")
    span.end()
    with fresh_plugin_manager(Counter()):
        record_content(span, CaptureMode.SPAN_AND_EVENT, input_messages=CHAT, output_text="Bye")
        record_content(trace_api.INVALID_SPAN, CaptureMode.SPAN_AND_EVENT, input_messages=CHAT, output_text="Bye")
    assert Counter.calls == 0
    assert attrs_of(finished(telemetry, "ended")) == {}


# ----------------------------------------------------------------------------- redaction


class EmailRedactor:
    """A redaction plugin that replaces an e-mail address and remembers what it was shown."""

    def __init__(self, span: Any = None) -> None:
        self.kinds: list[str] = []
        self.span = span
        self.span_had_content: list[bool] = []

    @hookimpl
    def llamatelemetry_redact_messages(self, messages: list[dict[str, Any]], kind: str) -> None:
        self.kinds.append(kind)
        if self.span is not None:
            recorded = dict(self.span.attributes or {})
            self.span_had_content.append(any(key in recorded for key in CONTENT_KEYS) or bool(self.span.events))
        for message in messages:
            for part in message.get("parts", []):
                if "content" in part:
                    part["content"] = part["content"].replace(EMAIL, "<email>")


def redacted_chat() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": f"Escalate to {EMAIL}."},
        {"role": "user", "content": f"My address is {EMAIL}"},
        {"role": "user", "content": [{"type": "text", "text": f"cc {EMAIL}"}]},
    ]


def test_redaction_applies_before_recording(telemetry: InMemoryTelemetry) -> None:
    messages = redacted_chat()
    with llamatelemetry.get_tracer().start_as_current_span("content") as span:
        redactor = EmailRedactor(span)
        with fresh_plugin_manager(redactor):
            record_content(span, CaptureMode.SPAN_AND_EVENT, input_messages=messages,
                           output_text=f"I will write to {EMAIL}", finish_reason="stop")
    finished_span = telemetry.span("content")
    assert sorted(redactor.kinds) == ["input", "output", "system"]
    assert redactor.span_had_content == [False, False, False]
    recorded = attrs_of(finished_span)
    event = content_events(finished_span)[0]
    everything = [*recorded.values(), *dict(event.attributes or {}).values()]
    assert not any(EMAIL in str(value) for value in everything)
    assert json.loads(recorded[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS]) == [
        {"type": "text", "content": "Escalate to <email>."}]
    assert json.loads(recorded[gen_ai.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "My address is <email>"}]},
        {"role": "user", "parts": [{"type": "text", "content": "cc <email>"}]},
    ]
    assert json.loads(recorded[gen_ai.GEN_AI_OUTPUT_MESSAGES])[0]["parts"] == [
        {"type": "text", "content": "I will write to <email>"}]
    # The hook works on a private copy: the caller's messages are untouched.
    assert messages == redacted_chat()


def test_redaction_hooks_chain(telemetry: InMemoryTelemetry) -> None:
    phone = "+1-555-0100"
    seen: list[str] = []

    class PhoneRedactor:
        @hookimpl
        def llamatelemetry_redact_messages(self, messages: list[dict[str, Any]], kind: str) -> None:
            for message in messages:
                for part in message.get("parts", []):
                    seen.append(part["content"])
                    part["content"] = part["content"].replace(phone, "<phone>")

    with fresh_plugin_manager(EmailRedactor(), PhoneRedactor()):
        span = record(telemetry, CaptureMode.SPAN_ONLY,
                      input_messages=[{"role": "user", "content": f"mail {EMAIL} or call {phone}"}])
    content = json.loads(attrs_of(span)[gen_ai.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"]
    assert content == "mail <email> or call <phone>"
    assert len(seen) == 1


def test_failing_redaction_hook_records_no_content(telemetry: InMemoryTelemetry) -> None:
    class BrokenRedactor:
        @hookimpl
        def llamatelemetry_redact_messages(self, messages: list[dict[str, Any]], kind: str) -> None:
            raise RuntimeError("redaction backend unavailable")

    with fresh_plugin_manager(BrokenRedactor()):
        span = record(telemetry, CaptureMode.SPAN_AND_EVENT, input_messages=[{"role": "user", "content": SECRET}],
                      output_text=SECRET)
    everything = [*attrs_of(span).values(), *(v for e in span.events for v in dict(e.attributes or {}).values())]
    assert not any(SECRET in str(value) for value in everything)


def test_sampling_attributes_is_the_one_mapping_of_sampling_settings() -> None:
    from llamatelemetry.semconv.mapping import SAMPLING_KEYS, sampling_attributes

    attributes = sampling_attributes({
        "max_tokens": 16, "temperature": 0, "top_p": 0.9, "top_k": 40, "frequency_penalty": 0.0,
        "presence_penalty": 0.5, "repeat_penalty": 1.1, "seed": 7, "stop": "\n", "n_predict": 99,
    })
    assert attributes == {
        gen_ai.GEN_AI_REQUEST_MAX_TOKENS: 16, gen_ai.GEN_AI_REQUEST_TEMPERATURE: 0.0,
        gen_ai.GEN_AI_REQUEST_TOP_P: 0.9, gen_ai.GEN_AI_REQUEST_TOP_K: 40.0,
        gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY: 0.5, "llamatelemetry.request.repeat_penalty": 1.1,
        gen_ai.GEN_AI_REQUEST_SEED: 7, gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES: ["\n"],
    }  # a penalty of 0 is "off"; unknown keys (n_predict) are ignored
    assert isinstance(attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE], float)
    # llama.cpp's "until the context is full", booleans and strings where numbers belong are left out
    assert sampling_attributes({"max_tokens": -1, "temperature": True, "seed": False, "top_p": "0.9"}) == {}
    assert sampling_attributes({"stop": ["a", 3, "b"]}) == {gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES: ["a", "b"]}
    assert set(SAMPLING_KEYS) >= {"max_tokens", "temperature", "stop"}
