"""instrument_llamacpp on a user's own llama_cpp.Llama: span shape, streams, metrics, and a clean undo."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_llamacpp.instrument import (
    INSTRUMENTERS,
    instrument_llamacpp,
    is_instrumented,
    uninstrument_llamacpp,
)

llama_cpp = pytest.importorskip("llama_cpp", reason='pip install "llamatelemetry-llamacpp[engine]"')

CHAT = [{"role": "user", "content": "Tell me about the fox."}]
PATCHED = ("create_completion", "create_chat_completion", "__call__")


@pytest.fixture(scope="module")
def model(tiny_gguf: Path) -> Iterator[Any]:
    """The user's own Llama on the tiny model, loaded once."""
    llm = llama_cpp.Llama(str(tiny_gguf), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    yield llm
    llm.close()


@pytest.fixture
def llm(model: Any) -> Iterator[Any]:
    """The Llama, instrumented for the test and restored after it."""
    instrument_llamacpp(model)
    yield model
    uninstrument_llamacpp(model)


def _only_span(telemetry: InMemoryTelemetry) -> Any:
    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_chat_completion_span_matches_the_engine_shape(llm: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        response = llm.create_chat_completion(messages=CHAT, max_tokens=4, temperature=0.0, seed=7, stop=["zz"])
        span = _only_span(telemetry)  # the chat handler's inner create_completion is not a second span
        durations = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
        usage = {p.attributes[gen_ai.GEN_AI_TOKEN_TYPE]: p for p in telemetry.metric_points(
            gen_ai.GEN_AI_CLIENT_TOKEN_USAGE)}
    assert span.name == "chat tiny-llama" and span.kind.name == "INTERNAL"
    attributes = span.attributes or {}
    assert attributes[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    assert attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "tiny-llama"
    assert attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] == 4
    assert attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] == 0.0
    assert attributes[gen_ai.GEN_AI_REQUEST_SEED] == 7
    assert list(attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES]) == ["zz"]
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == response["usage"]["prompt_tokens"]
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == response["usage"]["completion_tokens"] == 4
    assert list(attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ["length"]
    assert attributes[gen_ai.GEN_AI_RESPONSE_ID] == response["id"]
    assert gen_ai.GEN_AI_INPUT_MESSAGES not in attributes, "content is off by default"
    assert durations and durations[0].attributes[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert usage["input"].point.sum == response["usage"]["prompt_tokens"]
    assert usage["output"].point.sum == 4


def test_call_and_create_completion_are_text_completions(llm: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        llm("the quick brown", max_tokens=3, temperature=0.0)
        llm.create_completion("the lazy dog", max_tokens=2, temperature=0.0)
        llm.__call__("once upon", max_tokens=2, temperature=0.0)
        spans = telemetry.spans()
    assert [s.name for s in spans] == ["text_completion tiny-llama"] * 3
    assert [(s.attributes or {})[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] for s in spans] == [3, 2, 2]


def test_exhausted_stream_ends_its_span_with_first_chunk_time(llm: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        stream = llm.create_completion("the quick brown", max_tokens=5, temperature=0.0, stream=True)
        assert not telemetry.spans(), "the span stays open while the stream is consumed"
        chunks = list(stream)
        span = _only_span(telemetry)
        first_chunk = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK)
        per_chunk = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK)
    attributes = span.attributes or {}
    assert attributes[gen_ai.GEN_AI_REQUEST_STREAM] is True
    with_text = [chunk for chunk in chunks if chunk["choices"][0]["text"]]  # the last one only says "length"
    assert len(with_text) == 5 and len(chunks) == 6
    assert attributes[core_names.STREAM_CHUNKS] == len(with_text)
    assert core_names.STREAM_CLOSED_EARLY not in attributes
    assert 0 < attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9
    assert list(attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ["length"]
    assert first_chunk[0].value == 1 and per_chunk[0].value == len(with_text) - 1


def test_abandoned_stream_ends_its_span(llm: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        stream = llm.create_chat_completion(messages=CHAT, max_tokens=16, temperature=0.0, stream=True)
        next(stream)
        next(stream)
        del stream
        gc.collect()
        span = _only_span(telemetry)
        never_read = llm.create_completion("the fox", max_tokens=4, stream=True)
        del never_read
        gc.collect()
        spans = telemetry.spans()
    attributes = span.attributes or {}
    assert attributes[core_names.STREAM_CLOSED_EARLY] is True
    assert attributes[core_names.STREAM_CHUNKS] == 1  # chat's first chunk only names the role: no output
    assert len(spans) == 2 and (spans[1].attributes or {})[core_names.STREAM_CHUNKS] == 0


def test_closed_stream_ends_its_span(llm: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        with llm.create_completion("the fox", max_tokens=8, temperature=0.0, stream=True) as stream:
            next(stream)
        span = _only_span(telemetry)
        stream.close()  # again: harmless
        assert list(stream) == []
    assert (span.attributes or {})[core_names.STREAM_CLOSED_EARLY] is True


def test_failure_is_an_error_span(llm: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(ValueError, match="exceed context window"):
            llm.create_completion("the fox " * 300, max_tokens=4)
        span = _only_span(telemetry)
        durations = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert (span.attributes or {})[gen_ai.ERROR_TYPE] == "ValueError"
    assert durations[0].attributes[gen_ai.ERROR_TYPE] == "ValueError"


def test_content_is_recorded_only_when_asked(llm: Any) -> None:
    with InMemoryTelemetry(capture_content="SPAN_ONLY") as telemetry:
        response = llm.create_chat_completion(messages=CHAT, max_tokens=3, temperature=0.0)
        attributes = _only_span(telemetry).attributes or {}
    assert "Tell me about the fox." in attributes[gen_ai.GEN_AI_INPUT_MESSAGES]
    assert response["choices"][0]["message"]["content"] in attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]


def test_request_hooks_see_each_call_as_a_request_and_its_result(llm: Any) -> None:
    from llamatelemetry.plugins import hookimpl, register_plugin, unregister_plugin

    class Hooks:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any, Any]] = []

        @hookimpl
        def llamatelemetry_request_start(self, span: Any, request: Any) -> None:
            self.calls.append(("start", request, None))

        @hookimpl
        def llamatelemetry_request_end(self, span: Any, request: Any, result: Any, error: Any) -> None:
            self.calls.append(("end", request, result))

    hooks = Hooks()
    register_plugin(hooks)
    try:
        with InMemoryTelemetry():
            llm.create_chat_completion(messages=CHAT, max_tokens=3, temperature=0.0)
            stream = llm.create_completion("The fox", max_tokens=3, temperature=0.0, stream=True)
            streamed = "".join(chunk["choices"][0]["text"] for chunk in stream)
    finally:
        unregister_plugin(hooks)
    (_, chat, _), (_, chat_again, chat_result), (_, text, _), (_, _, text_result) = hooks.calls
    assert chat is chat_again and chat.messages == CHAT and chat.max_tokens == 3 and chat.operation == "chat"
    assert chat_result.output_tokens == 3 and chat_result.request_id == chat.request_id and chat_result.text
    assert text.operation == "text_completion" and text.stream and text.messages[0]["content"] == "The fox"
    assert text_result.text == streamed


def test_instrumenting_twice_is_harmless_and_uninstrument_restores_exactly(model: Any) -> None:
    assert not any(name in model.__dict__ for name in PATCHED)
    instrument_llamacpp(model)
    wrapper = model.__dict__["create_completion"]
    instrument_llamacpp(model)
    assert model.__dict__["create_completion"] is wrapper
    assert is_instrumented(model)
    with InMemoryTelemetry() as telemetry:
        model("the fox", max_tokens=1)
        assert len(telemetry.spans()) == 1
        uninstrument_llamacpp(model)
        uninstrument_llamacpp(model)  # again: harmless
        model("the fox", max_tokens=1)
        assert len(telemetry.spans()) == 1, "no span after uninstrument"
    assert not is_instrumented(model)
    assert not any(name in model.__dict__ for name in PATCHED)
    assert not [key for key in model.__dict__ if "llamatelemetry" in key]
    assert model.create_completion.__func__ is llama_cpp.Llama.create_completion


def test_uninstrument_restores_a_method_the_user_had_replaced(model: Any) -> None:
    def own_completion(*args: Any, **kwargs: Any) -> Any:
        return llama_cpp.Llama.create_completion(model, *args, **kwargs)

    model.create_completion = own_completion
    try:
        instrument_llamacpp(model)
        with InMemoryTelemetry() as telemetry:
            model.create_completion("the fox", max_tokens=1)
            assert len(telemetry.spans()) == 1
        uninstrument_llamacpp(model)
        assert model.__dict__["create_completion"] is own_completion
    finally:
        del model.create_completion


def test_instrumentation_does_not_keep_the_model_alive(tiny_gguf: Path) -> None:
    other = llama_cpp.Llama(str(tiny_gguf), n_ctx=256, n_threads=1, verbose=False)
    instrument_llamacpp(other)
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None


def test_calls_pass_straight_through_without_telemetry(llm: Any) -> None:
    response = llm.create_completion("the fox", max_tokens=2, temperature=0.0)
    assert response["usage"]["completion_tokens"] == 2


def test_the_core_sdk_reaches_this_instrumentor(model: Any) -> None:
    from llamatelemetry.sdk import instrument_llamacpp as from_core
    from llamatelemetry.sdk import uninstrument

    assert from_core(model) is model and is_instrumented(model)
    uninstrument("llama_cpp", model)
    assert not is_instrumented(model)
    with pytest.raises(TypeError, match="no options"):
        instrument_llamacpp(model, capture=True)


def test_unsupported_objects_are_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"supports llama_cpp\.Llama.*builtins\.object"):
        instrument_llamacpp(object())
    with pytest.raises(TypeError, match=r"llama_cpp\.Llama"):
        uninstrument_llamacpp("not a model")
    assert "llama_cpp.Llama" in INSTRUMENTERS


def test_a_llamacpp_client_is_accepted_as_already_instrumented(llama_server: Any) -> None:
    from llamatelemetry_llamacpp.client import LlamaCppClient

    client = LlamaCppClient(llama_server.base_url)
    try:
        assert instrument_llamacpp(client) is client
        assert instrument_llamacpp(client) is client, "twice is harmless"
        with InMemoryTelemetry() as telemetry:
            client.chat.create(messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0.0)
            assert len(telemetry.spans()) == 1, "the client's own span, not a second one"
        assert uninstrument_llamacpp(client) is client
    finally:
        client.close()
