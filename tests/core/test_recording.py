"""The request recorder: one generation becomes one span, its metrics and its hook calls, the same for everyone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from llamatelemetry.inference import InferenceRequest, InferenceResult, SamplingParams
from llamatelemetry.inference.recording import (
    current_generation,
    request_from_payload,
    start_generation,
    telemetry_active,
)
from llamatelemetry.plugins import hookimpl, register_plugin, unregister_plugin
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

REQUEST = InferenceRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                           max_tokens=8, sampling=SamplingParams(temperature=0.0, seed=3), model="tiny.gguf")


def _result(**overrides: Any) -> InferenceResult:
    fields: dict[str, Any] = {"text": "Hello there", "input_tokens": 5, "output_tokens": 2, "finish_reason": "stop",
                              "ttft_ms": 12.0, "decode_tps": 50.0, "model": "tiny", "response_id": "r-1",
                              "request_id": REQUEST.request_id}
    fields.update(overrides)
    return InferenceResult(**fields)


class _Hooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any, Any]] = []

    @hookimpl
    def llamatelemetry_request_start(self, span: Any, request: Any) -> None:
        self.calls.append(("start", request, None, None))

    @hookimpl
    def llamatelemetry_request_end(self, span: Any, request: Any, result: Any, error: Any) -> None:
        self.calls.append(("end", request, result, error))


@pytest.fixture(autouse=True)
def _no_installed_plugins() -> Iterator[None]:
    # Installed plugins may implement request hooks (the transformers one does): each test says which hooks exist.
    with fresh_plugin_manager():
        yield


@pytest.fixture
def hooks() -> Iterator[_Hooks]:
    plugin = _Hooks()
    register_plugin(plugin, name="recording-test-hooks")
    yield plugin


def _points(telemetry: InMemoryTelemetry, name: str) -> list[Any]:
    return telemetry.metric_points(name)


def test_without_telemetry_the_generation_is_inactive_and_does_nothing() -> None:
    assert not telemetry_active()
    generation = start_generation(REQUEST, provider="p")
    assert not generation.active and not generation.needs_text and generation.request is None
    with generation as inside:
        inside.chunk()
        inside.finish(_result())
    generation.fail(RuntimeError("ignored"))
    assert generation.stamps == [] and not current_generation().active


def test_a_finished_generation_is_one_span_with_request_and_response_attributes() -> None:
    with InMemoryTelemetry() as telemetry:
        generation = start_generation(REQUEST, provider="my_engine", kind="internal",
                                      attributes={"app.extra": "yes"})
        assert generation.active and not generation.needs_text  # no capture, no hooks: text not needed
        generation.finish(_result(), attributes={"my.response.figure": 7})
        span = telemetry.span("chat tiny")
    attributes = span.attributes
    assert span.kind.name == "INTERNAL"
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "my_engine"
    assert attributes["gen_ai.request.model"] == "tiny" and attributes["gen_ai.request.seed"] == 3
    assert attributes["gen_ai.usage.input_tokens"] == 5 and attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",) and attributes["gen_ai.response.id"] == "r-1"
    assert attributes["app.extra"] == "yes" and attributes["my.response.figure"] == 7
    assert "gen_ai.request.stream" not in attributes and "llamatelemetry.stream.chunks" not in attributes
    assert "gen_ai.input.messages" not in attributes  # content is opt-in


def test_metrics_in_process_include_the_server_side_figures() -> None:
    with InMemoryTelemetry() as telemetry:
        start_generation(REQUEST, provider="p").finish(_result())
        duration = _points(telemetry, "gen_ai.client.operation.duration")
        tokens = {p.attributes["gen_ai.token.type"]: p for p in _points(telemetry, "gen_ai.client.token.usage")}
        ttft = _points(telemetry, "gen_ai.server.time_to_first_token")
        tpot = _points(telemetry, "gen_ai.server.time_per_output_token")
        server = _points(telemetry, "gen_ai.server.request.duration")
    assert len(duration) == 1 and duration[0].attributes["gen_ai.response.model"] == "tiny"
    assert tokens["input"].point.sum == 5 and tokens["output"].point.sum == 2
    assert ttft[0].point.sum == pytest.approx(0.012) and tpot[0].point.sum == pytest.approx(0.02)
    assert server[0].point.count == 1


def test_a_client_generation_records_no_server_side_metrics() -> None:
    with InMemoryTelemetry() as telemetry:
        start_generation(REQUEST, provider="p", kind="client", server_address="gpu-box",
                         server_port=8080).finish(_result())
        span = telemetry.spans()[0]
        server = _points(telemetry, "gen_ai.server.request.duration")
        duration = _points(telemetry, "gen_ai.client.operation.duration")
    assert span.kind.name == "CLIENT" and span.attributes["server.address"] == "gpu-box"
    assert not server and duration[0].attributes["server.port"] == 8080


def test_streamed_chunks_give_time_to_first_chunk_and_every_gap() -> None:
    with InMemoryTelemetry() as telemetry:
        generation = start_generation(REQUEST, provider="p", stream=True)
        start = generation.started
        for offset in (0.010, 0.015, 0.025, 0.030):
            generation.chunk(start + offset)
        generation.finish(_result(), closed_early=True)
        span = telemetry.spans()[0]
        first = _points(telemetry, "gen_ai.client.operation.time_to_first_chunk")
        gaps = _points(telemetry, "gen_ai.client.operation.time_per_output_chunk")
    assert span.attributes["gen_ai.request.stream"] is True
    assert span.attributes["llamatelemetry.stream.chunks"] == 4
    assert span.attributes["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.010)
    assert span.attributes["llamatelemetry.stream.closed_early"] is True
    assert first[0].point.sum == pytest.approx(0.010)
    assert gaps[0].point.count == 3 and gaps[0].point.sum == pytest.approx(0.020)


def test_a_failed_generation_has_status_error_and_an_error_typed_duration(hooks: _Hooks) -> None:
    error = TimeoutError("server too slow")
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(TimeoutError), start_generation(REQUEST, provider="p"):
            raise error
        span = telemetry.spans()[0]
        duration = _points(telemetry, "gen_ai.client.operation.duration")
    assert span.status.status_code.name == "ERROR" and span.attributes["error.type"] == "TimeoutError"
    assert duration[0].attributes["error.type"] == "TimeoutError"
    assert hooks.calls[-1] == ("end", REQUEST, None, error)


def test_request_hooks_see_the_request_and_the_result(hooks: _Hooks) -> None:
    result = _result()
    with InMemoryTelemetry():
        generation = start_generation(REQUEST, provider="p")
        assert generation.request is REQUEST and generation.needs_text
        generation.finish(result)
    assert hooks.calls == [("start", REQUEST, None, None), ("end", REQUEST, result, None)]


def test_a_request_factory_is_called_only_when_a_hook_needs_it(hooks: _Hooks) -> None:
    built: list[int] = []

    def factory() -> InferenceRequest:
        built.append(1)
        return REQUEST

    with InMemoryTelemetry():
        start_generation(factory, provider="p").finish(_result())
        unregister_plugin(hooks)
        start_generation(factory, provider="p").finish(_result())
    assert built == [1] and [call[0] for call in hooks.calls] == ["start", "end"]


def test_a_factory_that_cannot_build_a_request_skips_the_hooks(hooks: _Hooks) -> None:
    with InMemoryTelemetry() as telemetry:
        start_generation(lambda: None, provider="p", operation="text_completion").finish(_result())
        assert telemetry.spans()[0].name == "text_completion"
    assert hooks.calls == []


def test_content_is_captured_only_when_opted_in_and_can_be_kept_off_per_call() -> None:
    with InMemoryTelemetry(capture_content="SPAN_ONLY") as telemetry:
        generation = start_generation(REQUEST, provider="p")
        assert generation.needs_text
        generation.finish(_result())
        start_generation(REQUEST, provider="p").finish(_result(), capture_content=False)
        captured, kept_off = telemetry.spans()
    assert '"Hi"' in captured.attributes["gen_ai.input.messages"]
    assert "Hello there" in captured.attributes["gen_ai.output.messages"]
    assert "Be brief." in captured.attributes["gen_ai.system_instructions"]
    assert "gen_ai.output.messages" not in kept_off.attributes


def test_input_messages_can_be_given_without_a_request() -> None:
    with InMemoryTelemetry(capture_content="SPAN_ONLY") as telemetry:
        start_generation(None, provider="p", operation="text_completion",
                         input_messages=[{"role": "user", "content": "raw prompt"}]).finish(_result())
        span = telemetry.spans()[0]
    assert "raw prompt" in span.attributes["gen_ai.input.messages"]


def test_the_span_is_current_inside_the_block_and_the_generation_is_found() -> None:
    from opentelemetry import trace

    from llamatelemetry.otel import get_tracer

    with InMemoryTelemetry() as telemetry:
        with start_generation(REQUEST, provider="p") as generation:
            assert trace.get_current_span() is generation.span
            assert current_generation() is generation
            current_generation().chunk()
            with get_tracer().start_as_current_span("child"):
                pass
        assert not current_generation().active
        child, parent = telemetry.spans()
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert generation.ended and len(generation.stamps) == 1


def test_use_makes_the_span_current_without_ending_it() -> None:
    from opentelemetry import trace

    with InMemoryTelemetry() as telemetry:
        generation = start_generation(REQUEST, provider="p")
        with generation.use():
            assert trace.get_current_span() is generation.span
        assert not generation.ended and telemetry.spans() == []
        generation.finish(_result())
        generation.finish(_result(output_tokens=99))  # a second end does nothing
        assert telemetry.spans()[0].attributes["gen_ai.usage.output_tokens"] == 2


def test_async_with_records_the_same_way() -> None:
    async def run(telemetry: InMemoryTelemetry) -> None:
        async with start_generation(REQUEST, provider="p") as generation:
            await asyncio.sleep(0)
            generation.finish(_result())

    with InMemoryTelemetry() as telemetry:
        asyncio.run(run(telemetry))
        assert telemetry.spans()[0].attributes["gen_ai.usage.output_tokens"] == 2


def test_a_recorder_failure_never_reaches_the_caller(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from llamatelemetry import _runtime

    def broken() -> Any:
        raise RuntimeError("metrics are broken")

    with InMemoryTelemetry() as telemetry:
        generation = start_generation(REQUEST, provider="p")
        monkeypatch.setattr(_runtime, "genai_metrics", broken)  # failure injection: the recorder's own metrics
        generation.finish(_result())
        assert len(telemetry.spans()) == 1  # the span still ended
    assert "llamatelemetry failed while ending a generation" in caplog.text


def test_request_from_payload_reads_openai_style_calls() -> None:
    chat = request_from_payload("chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                         "temperature": 0.5, "stop": "\n", "stream": True}, "m")
    assert chat is not None and chat.max_tokens == 4 and chat.sampling.temperature == 0.5
    assert chat.sampling.stop == ("\n",) and chat.stream and chat.model == "m"
    completion = request_from_payload("text_completion", {"prompt": "Once", "n_predict": 3})
    assert completion is not None and completion.messages == [{"role": "user", "content": "Once"}]
    assert completion.max_tokens == 3
    assert request_from_payload("text_completion", {"prompt": [1, 2, 3]}) is None  # token ids are no messages
    assert request_from_payload("chat", {"messages": [{"role": "robot", "content": "?"}]}) is None


def test_hooks_that_take_no_request_run_without_one_being_built() -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    built: list[int] = []

    class SpanOnly:
        @hookimpl
        def llamatelemetry_request_start(self, span: Any) -> None:
            seen.append(("start", (type(span).__name__,)))

        @hookimpl
        def llamatelemetry_request_end(self, span: Any, error: Any) -> None:
            seen.append(("end", (repr(error),)))

    def factory() -> InferenceRequest:
        built.append(1)
        return REQUEST

    register_plugin(SpanOnly())
    with InMemoryTelemetry():
        generation = start_generation(factory, provider="p")
        assert generation.request is None and not generation.needs_text  # nobody reads the request or the text
        generation.finish(_result())
    assert built == [] and [name for name, _ in seen] == ["start", "end"]


def test_a_hook_that_reads_the_result_makes_the_text_needed() -> None:
    class ResultReader:
        @hookimpl
        def llamatelemetry_request_end(self, span: Any, result: Any) -> None:
            self.result = result

    reader = ResultReader()
    register_plugin(reader)
    with InMemoryTelemetry():
        generation = start_generation(REQUEST, provider="p")
        assert generation.needs_text and generation.request is None
        result = _result()
        generation.finish(result)
    assert reader.result is result


def test_a_call_that_is_no_request_still_runs_the_hooks_that_take_none(hooks: _Hooks) -> None:
    spans: list[Any] = []

    class SpanOnly:
        @hookimpl
        def llamatelemetry_request_start(self, span: Any) -> None:
            spans.append(span)

    register_plugin(SpanOnly())  # and the fixture's plugin, which declares ``request``
    with InMemoryTelemetry():
        start_generation(lambda: None, provider="p", operation="embeddings").finish()
        start_generation(REQUEST, provider="p").finish(_result())
    assert len(spans) == 2  # both calls reached the span-only hook
    assert [call[0] for call in hooks.calls] == ["start", "end"]  # the request-taking one saw only the request


def test_what_the_result_reports_wins_over_the_chunk_marks_and_no_marks_make_no_stream_figures() -> None:
    with InMemoryTelemetry() as telemetry:
        start_generation(REQUEST, provider="p", stream=False).finish(
            _result(attributes={"llamatelemetry.stream.chunks": 5}))
        marked = start_generation(REQUEST, provider="p")
        marked.chunk()
        marked.finish(_result())
        reported, counted = telemetry.spans()
    assert reported.attributes["llamatelemetry.stream.chunks"] == 5
    assert counted.attributes["llamatelemetry.stream.chunks"] == 1  # marked chunks give the figures, stream or not


def test_embeddings_never_get_content_even_when_a_hook_reads_the_result() -> None:
    class ResultReader:
        @hookimpl
        def llamatelemetry_request_end(self, span: Any, result: Any) -> None:
            pass

    register_plugin(ResultReader())
    with InMemoryTelemetry(capture_content="SPAN_ONLY") as telemetry:
        start_generation(None, provider="p", operation="embeddings",
                         input_messages=[{"role": "user", "content": "embed me"}]).finish(_result(text=""))
        span = telemetry.spans()[0]
    assert "gen_ai.output.messages" not in span.attributes and "gen_ai.input.messages" not in span.attributes
