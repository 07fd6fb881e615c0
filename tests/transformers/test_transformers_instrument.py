"""instrument_transformers on a user's own model and pipeline: span shape, batches, streamers, errors, undo."""

from __future__ import annotations

import copy
import gc
import pickle
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from llamatelemetry.plugins import hookimpl, register_plugin, unregister_plugin
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_transformers import semconv as names
from llamatelemetry_transformers.instrument import instrument_transformers, is_instrumented, uninstrument_transformers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = "the quick brown fox"


@pytest.fixture
def model(llama: Any, tokenizer: Any) -> Iterator[Any]:
    """The user's tiny Llama, instrumented for the test and restored after it."""
    instrument_transformers(llama, tokenizer)
    yield llama
    uninstrument_transformers(llama)


def _inputs(tokenizer: Any, *texts: str) -> Any:
    tokenizer.padding_side = "left"
    return tokenizer(list(texts) if len(texts) > 1 else texts[0], return_tensors="pt", padding=len(texts) > 1)


def _generate_spans(telemetry: InMemoryTelemetry) -> list[Any]:
    return [s for s in telemetry.spans() if not s.name.startswith("transformers.")]


def test_generate_span_matches_the_engine_shape(model: Any, tokenizer: Any) -> None:
    inputs = _inputs(tokenizer, PROMPT)
    with InMemoryTelemetry() as telemetry:
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        spans = _generate_spans(telemetry)
        prefill = telemetry.span(names.SPAN_PREFILL)
        decode = telemetry.span(names.SPAN_DECODE)
        durations = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
        usage = {p.attributes[gen_ai.GEN_AI_TOKEN_TYPE]: p for p in telemetry.metric_points(
            gen_ai.GEN_AI_CLIENT_TOKEN_USAGE)}
        ttft = telemetry.metric_points(gen_ai.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN)
    assert len(spans) == 1
    span = spans[0]
    assert span.name == "text_completion tiny-llama" and span.kind.name == "INTERNAL"
    attributes = span.attributes or {}
    n_prompt = int(inputs["input_ids"].shape[1])
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "transformers"
    assert attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] == 6
    assert attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] == 0.0
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == n_prompt
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == output.shape[1] - n_prompt == 6
    assert list(attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ["length"]
    assert list(attributes[names.SEQUENCE_OUTPUT_TOKENS]) == [6] and attributes[names.BATCH_SIZE] == 1
    assert 0 < attributes[core_names.RESPONSE_TIME_TO_FIRST_TOKEN] < (span.end_time - span.start_time) / 1e9
    assert gen_ai.GEN_AI_REQUEST_STREAM not in attributes and gen_ai.GEN_AI_INPUT_MESSAGES not in attributes
    for child in (prefill, decode):
        assert child.parent is not None and child.parent.span_id == span.context.span_id
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time
    assert (prefill.attributes or {})[names.PHASE_TOKENS] == n_prompt
    assert (decode.attributes or {})[names.PHASE_TOKENS] == 5
    assert durations[0].value == 1 and durations[0].attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "tiny-llama"
    assert usage["input"].point.sum == n_prompt and usage["output"].point.sum == 6
    assert ttft and ttft[0].value == 1


def test_batched_generation_counts_each_sequence(model: Any, tokenizer: Any) -> None:
    inputs = _inputs(tokenizer, PROMPT, "once upon a time there was a small red fox")
    bare = model.__dict__["generate"].__wrapped__(model, **inputs, max_new_tokens=8, do_sample=False)
    width = inputs["input_ids"].shape[1]
    first_row, second_row = bare[0, width:].tolist(), bare[1, width:].tolist()
    # A token the first sequence makes third and the second never makes: as end-of-sequence it ends only the first.
    stopper = next(t for t in first_row[2:] if t not in second_row and t not in first_row[:2])
    position = first_row.index(stopper)
    with InMemoryTelemetry() as telemetry:
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False,
                                eos_token_id=[tokenizer.eos_token_id, stopper])
        span = _generate_spans(telemetry)[0]
    attributes = span.attributes or {}
    prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
    assert list(attributes[names.SEQUENCE_INPUT_TOKENS]) == prompt_tokens, "left padding is not input"
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == sum(prompt_tokens)
    assert list(attributes[names.SEQUENCE_OUTPUT_TOKENS]) == [position, 8]
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == position + 8
    assert list(attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ["stop", "length"]
    assert attributes[names.BATCH_SIZE] == 2
    assert output[0, width + position + 1:].tolist() == [tokenizer.pad_token_id] * (8 - position - 1)


def test_several_return_sequences_repeat_their_prompt(model: Any, tokenizer: Any) -> None:
    import torch

    inputs = _inputs(tokenizer, PROMPT, "hello world")
    torch.manual_seed(0)  # sampling: without a seed, an early end-of-sequence depends on the tests run before
    with InMemoryTelemetry() as telemetry:
        model.generate(**inputs, max_new_tokens=3, do_sample=True, top_k=0, num_return_sequences=2)
        attributes = _generate_spans(telemetry)[0].attributes or {}
    prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
    assert attributes[names.BATCH_SIZE] == 4
    assert list(attributes[names.SEQUENCE_INPUT_TOKENS]) == [prompt_tokens[0]] * 2 + [prompt_tokens[1]] * 2
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == sum(prompt_tokens), "each prompt counted once"
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 12
    assert attributes[gen_ai.GEN_AI_REQUEST_TOP_K] == 0.0


def test_a_users_streamer_still_gets_every_token(model: Any, tokenizer: Any) -> None:
    streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = _inputs(tokenizer, PROMPT)
    with InMemoryTelemetry() as telemetry:
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.append(
            model.generate(**inputs, max_new_tokens=10, do_sample=False, streamer=streamer)))
        worker.start()
        streamed = "".join(streamer)
        worker.join()
        span = _generate_spans(telemetry)[0]
        first_chunk = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK)
        per_chunk = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK)
    width = inputs["input_ids"].shape[1]
    assert streamed == tokenizer.decode(results[0][0, width:], skip_special_tokens=True)
    attributes = span.attributes or {}
    assert attributes[gen_ai.GEN_AI_REQUEST_STREAM] is True
    assert attributes[core_names.STREAM_CHUNKS] == 10
    assert 0 < attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9
    assert first_chunk[0].value == 1 and per_chunk[0].value == 9


def test_beam_search_is_traced_without_a_clock(model: Any, tokenizer: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        model.generate(**_inputs(tokenizer, PROMPT), max_new_tokens=4, num_beams=2, do_sample=False)
        names_seen = [s.name for s in telemetry.spans()]
        attributes = _generate_spans(telemetry)[0].attributes or {}
    assert names_seen == ["text_completion tiny-llama"], "no phase spans without per-step times"
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert core_names.RESPONSE_TIME_TO_FIRST_TOKEN not in attributes, "unknown, never made up"


def test_failure_is_an_error_span(model: Any, tokenizer: Any) -> None:
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(ValueError):
            model.generate(**_inputs(tokenizer, PROMPT), max_new_tokens=-1)
        span = _generate_spans(telemetry)[0]
        durations = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert (span.attributes or {})[gen_ai.ERROR_TYPE] == "ValueError"
    assert durations[0].attributes[gen_ai.ERROR_TYPE] == "ValueError"


def test_content_is_recorded_only_when_asked(model: Any, tokenizer: Any) -> None:
    with InMemoryTelemetry(capture_content="SPAN_ONLY") as telemetry:
        output = model.generate(**_inputs(tokenizer, PROMPT), max_new_tokens=4, do_sample=False)
        attributes = _generate_spans(telemetry)[0].attributes or {}
    assert PROMPT in attributes[gen_ai.GEN_AI_INPUT_MESSAGES]
    width = len(tokenizer(PROMPT)["input_ids"])
    completion = tokenizer.decode(output[0, width:], skip_special_tokens=True)
    assert completion.strip() and completion.strip() in attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]


def test_request_hooks_see_the_call(model: Any, tokenizer: Any) -> None:
    seen: list[tuple[Any, Any]] = []

    class Recorder:
        @hookimpl
        def llamatelemetry_request_end(self, span: Any, request: Any, result: Any, error: Any) -> None:
            seen.append((request, result))

    recorder = Recorder()
    with InMemoryTelemetry():
        register_plugin(recorder)
        try:
            model.generate(**_inputs(tokenizer, PROMPT), max_new_tokens=3, do_sample=False)
        finally:
            unregister_plugin(recorder)
    request, result = seen[0]
    assert request.operation == "text_completion" and request.messages[0]["content"] == PROMPT
    assert request.max_tokens == 3 and request.sampling.temperature == 0.0
    assert result.output_tokens == 3 and result.text and result.request_id == request.request_id


def test_telemetry_off_changes_nothing(model: Any, tokenizer: Any, llama: Any) -> None:
    inputs = _inputs(tokenizer, PROMPT)
    traced = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    bare = type(llama).generate(llama, **inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(traced, bare)


# ------------------------------------------------------------------ patching, undoing, copying


def test_idempotent_and_exactly_undone(llama: Any, tokenizer: Any) -> None:
    def own_generate(*args: Any, **kwargs: Any) -> Any:
        return type(llama).generate(llama, *args, **kwargs)

    llama.generate = own_generate  # something else patched the instance first
    instrument_transformers(llama, tokenizer)
    instrument_transformers(llama, tokenizer)
    assert is_instrumented(llama)
    with InMemoryTelemetry() as telemetry:
        llama.generate(**_inputs(tokenizer, PROMPT), max_new_tokens=2, do_sample=False)
        assert len(_generate_spans(telemetry)) == 1, "instrumenting twice does not double the spans"
        uninstrument_transformers(llama)
        uninstrument_transformers(llama)
        assert llama.__dict__["generate"] is own_generate
        llama.generate(**_inputs(tokenizer, PROMPT), max_new_tokens=2, do_sample=False)
        assert len(_generate_spans(telemetry)) == 1
    assert not is_instrumented(llama)
    del llama.generate
    instrument_transformers(llama, tokenizer)
    uninstrument_transformers(llama)
    assert "generate" not in llama.__dict__


def test_instrumented_model_can_be_freed(tiny_llama_dir: Any, tokenizer: Any) -> None:
    fresh = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True)
    instrument_transformers(fresh, tokenizer)
    ref = weakref.ref(fresh)
    generate = fresh.generate
    del fresh
    gc.collect()
    assert ref() is None, "the patch holds no reference cycle"
    with pytest.raises(ReferenceError, match="keep a reference"):
        generate()


def test_a_deep_copy_is_instrumented_on_its_own_weights(model: Any, tokenizer: Any, tiny_llama_dir: Any) -> None:
    twin = copy.deepcopy(model)
    assert is_instrumented(twin)
    with torch.no_grad():
        twin.get_output_embeddings().weight.mul_(-1)
    inputs = _inputs(tokenizer, PROMPT)
    with InMemoryTelemetry() as telemetry:
        mine = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        theirs = twin.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert len(_generate_spans(telemetry)) == 2
    assert not torch.equal(mine, theirs), "the copy generates with its own weights"
    with pytest.raises(TypeError, match="uninstrument_transformers"):
        pickle.dumps(model)


def test_pipeline_calls_are_traced_as_chat_or_text(llama: Any, tokenizer: Any) -> None:
    pipe = transformers.pipeline("text-generation", model=llama, tokenizer=tokenizer)
    instrument_transformers(pipe)
    try:
        with InMemoryTelemetry() as telemetry:
            chat = pipe([{"role": "user", "content": "tell me a story"}], max_new_tokens=3, do_sample=False)
            pipe(PROMPT, max_new_tokens=2, do_sample=False)
            spans = _generate_spans(telemetry)
    finally:
        uninstrument_transformers(pipe)
    assert [s.name for s in spans] == ["chat tiny-llama", "text_completion tiny-llama"]
    chat_attributes = spans[0].attributes or {}
    assert chat_attributes[names.PIPELINE_TASK] == "text-generation"
    assert chat_attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    templated = tokenizer.apply_chat_template([{"role": "user", "content": "tell me a story"}],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)
    assert chat_attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == len(templated["input_ids"])
    assert chat[0]["generated_text"][-1]["role"] == "assistant"
    assert not is_instrumented(pipe) and not is_instrumented(llama)
    assert "forward" not in pipe.__dict__ and "generate" not in llama.__dict__


def test_sdk_factory_uses_the_registered_instrumentor(llama: Any, tokenizer: Any) -> None:
    from llamatelemetry import sdk

    assert "transformers" in sdk.available_instrumentors()
    assert sdk.instrument_transformers(llama, tokenizer) is llama
    assert is_instrumented(llama)
    sdk.uninstrument("transformers", llama)
    assert not is_instrumented(llama)


def test_other_objects_are_refused() -> None:
    with pytest.raises(TypeError, match="transformers model"):
        instrument_transformers(object())
