"""LlamaCppBackend on real llama.cpp (llama-cpp-python): spans, exact counts, sampling, errors, metrics."""

from __future__ import annotations

import math
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry import errors as core_errors
from llamatelemetry.errors import BackendNotStartedError, BackendStartError
from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams
from llamatelemetry.semconv import gen_ai
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.backend import LlamaCppBackend, check_gguf_file
from llamatelemetry_llamacpp.backend_errors import (
    ChatTemplateError,
    ContextOverflowError,
    LlamaCppBackendError,
    LlamaCppNotInstalledError,
    ModelFileNotFoundError,
    ModelLoadError,
    NotAGGUFError,
    TruncatedModelError,
)

pytest.importorskip("llama_cpp", reason='pip install "llamatelemetry-llamacpp[engine]"')

GREEDY = SamplingParams(temperature=0.0)
STORY = [{"role": "user", "content": "Tell me a story about the quick brown fox."}]
ERROR = "StatusCode.ERROR"


def _request(messages: list[dict[str, Any]] = STORY, **options: Any) -> InferenceRequest:
    options.setdefault("max_tokens", 8)
    options.setdefault("sampling", GREEDY)
    return InferenceRequest(messages=messages, **options)


@pytest.fixture(scope="module")
def backend(tiny_gguf: Path) -> Iterator[LlamaCppBackend]:
    """The tiny model loaded once for the module (one thread: the CI machine has two cores)."""
    started = LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1)
    started.start()
    yield started
    started.shutdown()


@pytest.fixture
def engine(backend: LlamaCppBackend) -> InferenceEngine:
    """An engine over the module's backend; never shut down here (that would unload the model)."""
    return InferenceEngine(backend).start()


def _by_name(telemetry: InMemoryTelemetry, name: str) -> Any:
    return telemetry.span(name)


# ------------------------------------------------------------------ spans


def test_request_span_has_prefill_then_decode_children(engine: InferenceEngine, backend: LlamaCppBackend) -> None:
    backend.llama.reset()  # nothing cached: the whole prompt is prefilled
    with InMemoryTelemetry() as telemetry:
        result = engine.generate(_request())
        request = telemetry.span("chat tiny-llama")
        prefill = telemetry.span(names.SPAN_PREFILL)
        decode = telemetry.span(names.SPAN_DECODE)
    assert request.kind.name == "INTERNAL"
    for child in (prefill, decode):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id
        assert request.start_time <= child.start_time < child.end_time <= request.end_time
    assert prefill.end_time <= decode.start_time, "prefill ends before decode starts"
    assert result.ttft_ms is not None and result.total_ms is not None
    # The spans carry real times: prefill + decode fit in the request, and the measured total fits in the span.
    assert (request.end_time - request.start_time) / 1e6 >= result.total_ms * 0.9
    assert (prefill.attributes or {})[names.PHASE_TOKENS] == result.input_tokens
    assert (decode.attributes or {})[names.PHASE_TOKENS] == result.output_tokens == 8
    assert (decode.attributes or {})[names.DECODE_CALLS] == 7, "the last token is never evaluated"
    attributes = request.attributes or {}
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "llama_cpp"
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == result.input_tokens
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 8
    assert list(attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ["length"]
    assert 0 < attributes["llamatelemetry.response.time_to_first_token"] * 1e3 <= result.total_ms


def test_model_load_and_context_spans(tiny_gguf: Path, capfd: pytest.CaptureFixture[str]) -> None:
    backend = LlamaCppBackend(tiny_gguf, n_ctx=512, n_threads=1, verbose=True)
    with InMemoryTelemetry() as telemetry:
        backend.start()
        try:
            load = telemetry.span(names.SPAN_MODEL_LOAD)
            context = telemetry.span(names.SPAN_CONTEXT_CREATE)
            n_params, n_vocab = backend.llama._model.n_params(), backend.llama.n_vocab()
            points = telemetry.metric_points(names.METRIC_MODEL_LOAD_DURATION)
        finally:
            backend.shutdown()  # the model is freed: llama.cpp calls on it would crash from here on
    log = capfd.readouterr().err
    attributes = load.attributes or {}
    assert attributes[names.MODEL_PATH] == str(tiny_gguf)
    assert attributes[names.MODEL_FILE_SIZE] == tiny_gguf.stat().st_size
    assert attributes[names.MODEL_PARAMETERS] == n_params > 0
    assert attributes[names.MODEL_VOCAB_SIZE] == n_vocab
    assert attributes[names.MODEL_TRAINED_CONTEXT] == 512
    assert attributes[names.MODEL_MMAP] is True
    assert 0 < attributes[names.MODEL_LOAD_DURATION] <= (load.end_time - load.start_time) / 1e9
    assert context.parent is not None and context.parent.span_id == load.context.span_id
    assert load.start_time < context.start_time < context.end_time <= load.end_time
    ctx_attributes = context.attributes or {}
    assert ctx_attributes[names.CONTEXT_SIZE] == 512
    assert ctx_attributes[names.CONTEXT_BATCH_SIZE] == 512
    assert ctx_attributes[names.CONTEXT_FLASH_ATTENTION] is False
    # 2 layers x 512 cells x (K + V) x 64 dims x 2 bytes (f16), and llama.cpp's own figure agrees.
    assert ctx_attributes[names.KV_CACHE_SIZE] == 2 * 512 * 2 * 64 * 2
    logged = re.search(r"llama_kv_cache: size =\s+([\d.]+) MiB", log)
    assert logged, "llama.cpp logs its KV cache size with verbose=True"
    assert float(logged.group(1)) == pytest.approx(ctx_attributes[names.KV_CACHE_SIZE] / 2**20, abs=0.005)
    assert len(points) == 1 and points[0].value == 1


# ------------------------------------------------------------------ exact counts and sampling


def test_token_counts_are_exact(engine: InferenceEngine, backend: LlamaCppBackend) -> None:
    llm = backend.llama
    prompt = "the quick brown fox jumps over the lazy dog"
    result = engine.generate(_request([{"role": "user", "content": prompt}], operation="text_completion",
                                      max_tokens=5))
    assert result.input_tokens == len(llm.tokenize(prompt.encode(), add_bos=True, special=True))
    assert result.output_tokens == 5 and result.finish_reason == "length"
    # For chat, llama-cpp-python's own create_chat_completion counts the same templated prompt.
    chat = engine.generate(_request(max_tokens=3))
    reference = llm.create_chat_completion(messages=STORY, max_tokens=1, temperature=0.0)
    assert chat.input_tokens == reference["usage"]["prompt_tokens"]
    assert chat.output_tokens == 3


def test_greedy_is_deterministic_with_and_without_the_prompt_cache(engine: InferenceEngine,
                                                                    tiny_gguf: Path) -> None:
    first = engine.generate(_request(max_tokens=12))
    second = engine.generate(_request(max_tokens=12))
    assert second.text == first.text and second.output_tokens == 12
    assert second.cached_input_tokens == second.input_tokens - 1 == first.input_tokens - 1
    cold = LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1, cache_prompt=False)
    cold.start()
    try:
        again = cold.generate(_request(max_tokens=12))
        again_too = cold.generate(_request(max_tokens=12))
    finally:
        cold.shutdown()
    assert again.text == first.text
    assert again_too.cached_input_tokens == 0


def test_seeded_sampling_repeats(engine: InferenceEngine) -> None:
    sampling = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=1234)
    texts = {engine.generate(_request(max_tokens=16, sampling=sampling)).text for _ in range(2)}
    assert len(texts) == 1


def test_stop_string_ends_with_stop(engine: InferenceEngine) -> None:
    full = engine.generate(_request(max_tokens=24))
    words = full.text.split()
    stop = next(w for w in words[2:] if len(w) >= 2)  # a word well inside the completion
    cut = full.text.index(stop)
    stopped = engine.generate(_request(max_tokens=24, sampling=SamplingParams(temperature=0.0, stop=[stop])))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.output_tokens is not None and stopped.output_tokens < 24


def test_end_of_sequence_is_stop(tmp_path: Path) -> None:
    testing = pytest.importorskip("llamatelemetry_llamacpp.testing")
    eager = testing.write_tiny_gguf(tmp_path / "eager-eos.gguf", seed=0, eos_bias=30.0)
    backend = LlamaCppBackend(eager, n_ctx=256, n_threads=1)
    backend.start()
    try:
        result = backend.generate(_request(max_tokens=8))
    finally:
        backend.shutdown()
    assert result.finish_reason == "stop"
    assert result.output_tokens == 0 and result.text == ""
    assert result.ttft_ms is not None and result.ttft_ms > 0


def test_context_limit_caps_the_output(engine: InferenceEngine, backend: LlamaCppBackend) -> None:
    llm = backend.llama
    words = "the fox " * 200
    tokens = llm.tokenize(words.encode(), add_bos=True, special=True)
    room = 3
    # Trim the prompt, word by word, until exactly `room` context slots are left after it.
    text = words
    while len(tokens) > backend.n_ctx - room:
        text = text.rsplit(" ", 2)[0] + " "
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
    left = backend.n_ctx - len(tokens)
    result = engine.generate(_request([{"role": "user", "content": text}], operation="text_completion",
                                      max_tokens=50))
    assert result.output_tokens == left and result.finish_reason == "length"


# ------------------------------------------------------------------ metrics and llama.cpp's own counters


def test_decode_calls_are_timed_in_n_batch_chunks(tiny_gguf: Path) -> None:
    config = CudaInferenceConfig(gpu_layers=0, ctx_size=256, batch_size=8, flash_attn=False)
    backend = LlamaCppBackend(tiny_gguf, config, n_threads=1)
    with InMemoryTelemetry() as telemetry, InferenceEngine(backend) as engine:
        assert backend.llama.n_batch == 8
        result = engine.generate(_request(max_tokens=6))
        durations = {p.attributes[names.PHASE]: p for p in telemetry.metric_points(names.METRIC_DECODE_DURATION)}
        sizes = {p.attributes[names.PHASE]: p for p in telemetry.metric_points(names.METRIC_DECODE_BATCH_SIZE)}
        prefill = telemetry.span(names.SPAN_PREFILL)
        request = telemetry.span("chat tiny-llama")
    assert result.input_tokens is not None
    chunks = math.ceil(result.input_tokens / 8)
    assert (prefill.attributes or {})[names.DECODE_CALLS] == chunks
    assert durations["prefill"].value == chunks and sizes["prefill"].point.sum == result.input_tokens
    assert sizes["prefill"].point.max == 8
    assert durations["decode"].value == 5 and sizes["decode"].point.sum == 5
    assert durations["prefill"].attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "tiny-llama"
    assert 0 < durations["decode"].point.sum < (request.end_time - request.start_time) / 1e9
    # llama.cpp's own counters sit beside ours: together they saw every evaluated token.
    attributes = request.attributes or {}
    evaluated = attributes[names.LLAMA_PROMPT_EVAL_TOKENS] + attributes[names.LLAMA_EVAL_TOKENS]
    assert evaluated == result.input_tokens + 5
    assert attributes[names.LLAMA_PROMPT_EVAL_DURATION] >= 0 and attributes[names.LLAMA_EVAL_DURATION] > 0
    assert attributes["llamatelemetry.response.time_to_first_token"] > 0


def test_kv_cache_usage_after_the_request(engine: InferenceEngine, backend: LlamaCppBackend) -> None:
    with InMemoryTelemetry() as telemetry:
        result = engine.generate(_request(max_tokens=6))
        attributes = telemetry.span("chat tiny-llama").attributes or {}
        gauge = telemetry.metric_points(names.METRIC_KV_CACHE_USAGE)
    assert result.input_tokens is not None
    used = result.input_tokens + 6 - 1  # the last sampled token is returned, not evaluated
    assert attributes[names.KV_CACHE_USED_TOKENS] == used
    assert attributes[names.KV_CACHE_USAGE] == pytest.approx(used / backend.n_ctx)
    assert gauge and gauge[0].value == pytest.approx(used / backend.n_ctx)


def test_prompt_cache_is_reported(engine: InferenceEngine) -> None:
    engine.generate(_request(max_tokens=2))
    with InMemoryTelemetry() as telemetry:
        result = engine.generate(_request(max_tokens=2))
        prefill = telemetry.span(names.SPAN_PREFILL).attributes or {}
        request = telemetry.span("chat tiny-llama").attributes or {}
    assert result.cached_input_tokens == result.input_tokens - 1  # type: ignore[operator]
    assert prefill[names.PHASE_TOKENS] == 1
    assert request[gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == result.cached_input_tokens


# ------------------------------------------------------------------ errors


def _start_error(path: Path | str) -> tuple[BaseException, Any]:
    with InMemoryTelemetry() as telemetry:
        engine = InferenceEngine(LlamaCppBackend(path, n_ctx=256, n_threads=1))
        with pytest.raises(BackendStartError) as raised:
            engine.start()
        span = telemetry.span(names.SPAN_MODEL_LOAD)
    assert raised.value.__cause__ is not None
    return raised.value.__cause__, span


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "header-only"])
def test_bad_model_files_raise_distinct_errors_with_an_error_span(case: str, tiny_gguf: Path,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    expected: type[Exception]
    if case == "missing":
        expected = ModelFileNotFoundError
    elif case == "text":
        path.write_text("This is a text file, not a model.\n")
        expected = NotAGGUFError
    else:
        data = tiny_gguf.read_bytes()
        path.write_bytes(data[: len(data) // 2] if case == "truncated" else data[:200])
        expected = TruncatedModelError
    cause, span = _start_error(path)
    assert type(cause) is expected
    assert isinstance(cause, core_errors.ModelLoadError), "callers catch one class for any backend"
    assert isinstance(cause, core_errors.ModelNotFoundError) == (case == "missing")
    assert str(path) in str(cause)
    assert str(span.status.status_code) == ERROR
    assert (span.attributes or {})[gen_ai.ERROR_TYPE] == f"{expected.__module__}.{expected.__qualname__}"


def test_a_gguf_llama_cpp_cannot_load_is_a_load_error(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "not-an-architecture")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert check_gguf_file(path).n_tensors == 0  # complete and well-formed: llama.cpp is the one to refuse it
    cause, span = _start_error(path)
    assert type(cause) is ModelLoadError
    assert isinstance(cause, core_errors.ModelLoadError) and not isinstance(cause, core_errors.ModelNotFoundError)
    assert "upgrade" in str(cause)
    assert str(span.status.status_code) == ERROR


def test_error_messages_say_what_to_do(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFoundError, match="does not exist"):
        check_gguf_file(tmp_path / "absent.gguf")
    (tmp_path / "page.gguf").write_text("<html>404</html>")
    with pytest.raises(NotAGGUFError, match=r"GGUF magic.*convert_hf_to_gguf"):
        check_gguf_file(tmp_path / "page.gguf")
    shutil.copyfile(tiny_gguf, tmp_path / "cut.gguf")
    with open(tmp_path / "cut.gguf", "r+b") as handle:
        handle.truncate(tiny_gguf.stat().st_size - 1)
    with pytest.raises(TruncatedModelError, match="download the model again"):
        check_gguf_file(tmp_path / "cut.gguf")
    assert check_gguf_file(tiny_gguf).needed_size <= tiny_gguf.stat().st_size


def test_prompt_longer_than_the_context(engine: InferenceEngine) -> None:
    long_prompt = [{"role": "user", "content": "the quick brown fox " * 200}]
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(ContextOverflowError, match="context window holds 256"):
            engine.generate(_request(long_prompt))
        span = telemetry.span("chat tiny-llama")
        assert not [s for s in telemetry.spans() if s.name in (names.SPAN_PREFILL, names.SPAN_DECODE)]
    assert str(span.status.status_code) == ERROR
    assert (span.attributes or {})[gen_ai.ERROR_TYPE].endswith("ContextOverflowError")
    assert engine.generate(_request(max_tokens=2)).output_tokens == 2, "the backend still works"


def test_context_overflow_is_caught_as_the_core_class(backend: LlamaCppBackend) -> None:
    """``except llamatelemetry.errors.ContextOverflowError`` catches the overflow, with its sizes."""
    too_long = [{"role": "user", "content": "the quick brown fox " * 200}]
    try:
        backend.generate(_request(too_long))
    except core_errors.ContextOverflowError as caught:
        error = caught
    else:
        pytest.fail("a prompt longer than the context window was generated")
    assert type(error) is ContextOverflowError and isinstance(error, LlamaCppBackendError)
    assert error.n_ctx == 256 and error.prompt_tokens is not None and error.prompt_tokens > 256
    assert "n_ctx=" in str(error), "the message names this backend's own setting"


def test_a_chat_template_that_rejects_the_messages_is_the_core_error(tiny_gguf: Path) -> None:
    """llama-cpp-python's Jinja formatter raising on a system message: a core ChatTemplateError."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    strict = Jinja2ChatFormatter(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}", eos_token="</s>", bos_token="<s>").to_chat_handler()
    backend = LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1, chat_handler=strict)
    with InferenceEngine(backend) as engine:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]
        with pytest.raises(core_errors.ChatTemplateError, match="no system role") as raised:
            engine.generate(_request(messages))
        assert type(raised.value) is ChatTemplateError
        assert "text_completion" in str(raised.value), "the message says what to do"
        assert engine.generate(_request(messages[1:], max_tokens=2)).output_tokens == 2


def test_missing_llama_cpp_gives_the_install_command(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an interpreter without it sees on import
    with pytest.raises(LlamaCppNotInstalledError) as raised:
        LlamaCppBackend(tiny_gguf).start()
    assert isinstance(raised.value, ImportError)
    assert 'pip install "llamatelemetry-llamacpp[engine]"' in str(raised.value)
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in str(raised.value)


def test_unknown_llama_options_are_refused(tiny_gguf: Path) -> None:
    with pytest.raises(TypeError, match="n_ctxx"):
        LlamaCppBackend(tiny_gguf, n_ctxx=128).start()
    with pytest.raises(TypeError, match="server"):
        LlamaCppBackend(tiny_gguf, llama_server_url="http://127.0.0.1:8090")


def test_generate_before_start_and_after_shutdown(tiny_gguf: Path) -> None:
    backend = LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1)
    with pytest.raises(BackendNotStartedError):
        backend.generate(_request())
    backend.start()
    backend.shutdown()
    backend.shutdown()
    with pytest.raises(BackendNotStartedError):
        backend.generate(_request())


def test_create_engine_picks_the_in_process_backend_for_a_model_path(tiny_gguf: Path) -> None:
    from llamatelemetry.backends import LlamaCppBackend as FromCore
    from llamatelemetry.inference.api import create_engine

    engine = create_engine("llama.cpp", model_path=tiny_gguf, n_ctx=256, n_threads=1)
    assert type(engine.backend) is LlamaCppBackend is FromCore
    assert (engine.provider_name, engine.span_kind) == ("llama_cpp", "internal")
    with engine:
        assert engine.generate(_request(max_tokens=2)).output_tokens == 2


# ------------------------------------------------------------------ a real model


def test_real_model_chat_matches_llama_cpp_python(smollm2_gguf: Path) -> None:
    """On SmolLM2, greedy output and token counts equal llama-cpp-python's own create_chat_completion."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    backend = LlamaCppBackend(smollm2_gguf, n_ctx=512, n_threads=1)
    with InMemoryTelemetry() as telemetry, InferenceEngine(backend) as engine:
        result = engine.generate(_request(messages, max_tokens=12))
        reference = backend.llama.create_chat_completion(messages=messages, max_tokens=12, temperature=0.0,
                                                         repeat_penalty=GREEDY.repeat_penalty)
        request = telemetry.span("chat SmolLM2-135M-Instruct.Q4_1")
    assert result.text == reference["choices"][0]["message"]["content"] and result.text.strip()
    assert result.input_tokens == reference["usage"]["prompt_tokens"]
    assert result.output_tokens == reference["usage"]["completion_tokens"]
    assert (request.attributes or {})[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == result.output_tokens
    assert result.vram_peak_mb is None
