"""TransformersBackend on real transformers (tiny random models, CPU): spans, exact counts, sampling, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry import errors as core_errors
from llamatelemetry.errors import BackendNotStartedError, BackendStartError
from llamatelemetry.inference.api import create_engine
from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams
from llamatelemetry.semconv import gen_ai
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_transformers import semconv as names
from llamatelemetry_transformers.backend import OpenAIPenalties, TransformersBackend
from llamatelemetry_transformers.errors import (
    ChatTemplateError,
    ContextOverflowError,
    ModelFolderNotFoundError,
    ModelLoadError,
    TransformersBackendError,
)

torch = pytest.importorskip("torch")

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
STORY = [{"role": "user", "content": "tell me a story about the fox"}]


def _request(messages: list[dict[str, Any]] = STORY, **options: Any) -> InferenceRequest:
    options.setdefault("max_tokens", 8)
    options.setdefault("sampling", GREEDY)
    return InferenceRequest(messages=messages, **options)


@pytest.fixture(scope="module")
def backend(tiny_llama_dir: Path) -> Iterator[TransformersBackend]:
    """The tiny Llama loaded once for the module, on the CPU."""
    started = TransformersBackend(tiny_llama_dir, device="cpu")
    started.start()
    yield started
    started.shutdown()


@pytest.fixture
def engine(backend: TransformersBackend) -> InferenceEngine:
    """An engine over the module's backend (never shut down here: that would unload the model)."""
    return InferenceEngine(backend).start()


# ------------------------------------------------------------------ spans and times


def test_request_span_has_prefill_then_decode_children_with_real_times(engine: InferenceEngine) -> None:
    with InMemoryTelemetry() as telemetry:
        result = engine.generate(_request(max_tokens=8))
        request = telemetry.span("chat tiny-llama")
        prefill = telemetry.span(names.SPAN_PREFILL)
        decode = telemetry.span(names.SPAN_DECODE)
    assert request.kind.name == "INTERNAL"
    for child in (prefill, decode):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time
    assert prefill.end_time == decode.start_time, "decode starts when the first token exists"
    assert prefill.end_time - prefill.start_time > 0 and decode.end_time - decode.start_time > 0
    assert (prefill.attributes or {})[names.PHASE] == "prefill"
    assert (prefill.attributes or {})[names.PHASE_TOKENS] == result.input_tokens
    assert (decode.attributes or {})[names.PHASE] == "decode"
    assert (decode.attributes or {})[names.PHASE_TOKENS] == 7, "tokens after the first"
    # TTFT is when the first token existed: the end of prefill, measured from the request's start.
    ttft_ns = result.ttft_ms * 1e6  # type: ignore[operator]
    assert abs((prefill.end_time - request.start_time) - ttft_ns) < 2e6
    attributes = request.attributes or {}
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "transformers"
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 8
    assert list(attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ["length"]
    assert attributes[names.DEVICE] == "cpu" and attributes[names.DTYPE] == "float32"
    assert attributes[names.CHAT_TEMPLATE_APPLIED] is True


def test_ttft_is_the_first_token_not_the_whole_generation(engine: InferenceEngine) -> None:
    result = engine.generate(_request(max_tokens=40))
    assert result.ttft_ms is not None and result.total_ms is not None
    # 40 decoding steps take far longer than the first; the margin leaves room for a busy machine.
    assert 0 < result.ttft_ms < result.total_ms * 0.8
    assert result.decode_tps is not None and result.prefill_tps is not None
    assert result.tps == pytest.approx(40 / (result.total_ms / 1e3))


def test_model_load_span_and_metric(tiny_llama_dir: Path) -> None:
    backend = TransformersBackend(tiny_llama_dir, device="cpu")
    with InMemoryTelemetry() as telemetry:
        backend.start()
        try:
            span = telemetry.span(names.SPAN_MODEL_LOAD)
            points = telemetry.metric_points(names.METRIC_MODEL_LOAD_DURATION)
            parameters = backend.model.num_parameters()
        finally:
            backend.shutdown()
    attributes = span.attributes or {}
    assert attributes[names.MODEL_PATH] == str(tiny_llama_dir)
    assert attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "tiny-llama"
    assert attributes[names.MODEL_PARAMETERS] == parameters > 0
    assert attributes[names.MODEL_TRAINED_CONTEXT] == 256
    assert attributes[names.ARCHITECTURE] == "LlamaForCausalLM"
    assert 0 < attributes[names.MODEL_LOAD_DURATION] <= (span.end_time - span.start_time) / 1e9
    assert len(points) == 1 and points[0].value == 1


# ------------------------------------------------------------------ exact counts, templates, sampling


def test_counts_are_exact_from_the_ids(engine: InferenceEngine, tokenizer: Any) -> None:
    chat = engine.generate(_request(max_tokens=5))
    templated = tokenizer.apply_chat_template(STORY, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert chat.input_tokens == len(templated["input_ids"])
    assert chat.output_tokens == 5 and chat.finish_reason == "length"
    prompt = "the quick brown fox jumps over the lazy dog"
    text = engine.generate(_request([{"role": "user", "content": prompt}], operation="text_completion", max_tokens=3))
    assert text.input_tokens == len(tokenizer(prompt)["input_ids"])
    assert text.output_tokens == 3


def test_greedy_output_is_what_generate_itself_makes(engine: InferenceEngine, backend: TransformersBackend,
                                                     tokenizer: Any) -> None:
    result = engine.generate(_request(max_tokens=12))
    ids = tokenizer.apply_chat_template(STORY, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reference = backend.model.generate(**ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(reference[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert result.text == expected and result.text
    assert engine.generate(_request(max_tokens=12)).text == expected


def test_model_without_chat_template_uses_the_messages_text(tiny_gpt2_dir: Path) -> None:
    from transformers import AutoTokenizer

    backend = TransformersBackend(tiny_gpt2_dir, device="cpu")
    with InferenceEngine(backend) as engine:
        result = engine.generate(_request(max_tokens=4))
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir, local_files_only=True)
    assert result.input_tokens == len(tokenizer(STORY[0]["content"])["input_ids"])
    assert result.output_tokens == 4
    assert result.attributes[names.CHAT_TEMPLATE_APPLIED] is False


def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone(engine: InferenceEngine) -> None:
    sampling = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=1234)
    state = torch.random.get_rng_state()
    texts = {engine.generate(_request(max_tokens=16, sampling=sampling)).text for _ in range(2)}
    assert len(texts) == 1
    assert torch.equal(torch.random.get_rng_state(), state), "a seeded request must not reseed the process"
    other = engine.generate(_request(max_tokens=16, sampling=SamplingParams(temperature=1.0, top_k=0, seed=99)))
    assert other.text not in texts


def test_sampling_params_map_to_generate(backend: TransformersBackend) -> None:
    loaded = backend._require()
    greedy = backend._generate_kwargs(loaded, SamplingParams(temperature=0.0), 5, 8)
    assert greedy["do_sample"] is False and greedy["temperature"] is None and greedy["top_k"] is None
    assert greedy["repetition_penalty"] == 1.1 and greedy["max_new_tokens"] == 8
    sampled = backend._generate_kwargs(loaded, SamplingParams(temperature=0.7, top_p=0.9, top_k=0, repeat_penalty=1.0,
                                                              stop=["fox"], frequency_penalty=0.5), 5, 8)
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (True, 0.7, 0.9, 0)
    assert sampled["repetition_penalty"] is None
    assert sampled["stop_strings"] == ["fox"] and sampled["tokenizer"] is loaded.tokenizer
    assert isinstance(sampled["logits_processor"][0], OpenAIPenalties)


def test_openai_penalties_subtract_counts_of_generated_tokens_only() -> None:
    penalties = OpenAIPenalties(frequency=0.5, presence=1.0, prompt_length=2)
    input_ids = torch.tensor([[3, 3, 1, 1, 2]])  # the prompt's 3s do not count
    scores = torch.zeros(1, 4)
    out = penalties(input_ids, scores)
    assert out.tolist() == [[0.0, -2.0, -1.5, 0.0]]


def test_frequency_penalty_changes_what_greedy_decoding_repeats(engine: InferenceEngine) -> None:
    plain = engine.generate(_request(max_tokens=24))
    penalized = engine.generate(_request(max_tokens=24, sampling=SamplingParams(
        temperature=0.0, repeat_penalty=1.0, frequency_penalty=2.0, presence_penalty=2.0)))
    assert penalized.text != plain.text
    assert len(set(penalized.text.split())) >= len(set(plain.text.split()))


def test_stop_string_ends_with_stop(engine: InferenceEngine) -> None:
    full = engine.generate(_request(max_tokens=24))
    words = full.text.split()
    stop = next(w for w in words[2:] if len(w) >= 3)
    cut = full.text.index(stop)
    stopped = engine.generate(_request(max_tokens=24, sampling=SamplingParams(temperature=0.0, repeat_penalty=1.0,
                                                                             stop=[stop])))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.output_tokens is not None and stopped.output_tokens < 24


def test_end_of_sequence_is_stop(tiny_llama_dir: Path, llama: Any, tokenizer: Any) -> None:
    ids = tokenizer.apply_chat_template(STORY, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    first_id = int(llama.generate(**ids, max_new_tokens=1, do_sample=False)[0, -1])
    # The model's own end-of-sequence ids now include the token it starts this answer with.
    llama.generation_config.eos_token_id = [tokenizer.eos_token_id, first_id]
    backend = TransformersBackend(model=llama, tokenizer=tokenizer)
    backend.start()
    result = backend.generate(_request(max_tokens=8))
    backend.shutdown()
    assert result.finish_reason == "stop"
    assert result.output_tokens == 0 and result.text == ""
    assert result.ttft_ms is not None and result.ttft_ms > 0


def test_context_limit_caps_the_output_and_refuses_overflow(tiny_llama_dir: Path, tokenizer: Any) -> None:
    n_prompt = len(tokenizer.apply_chat_template(STORY, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])
    backend = TransformersBackend(tiny_llama_dir, CudaInferenceConfig(gpu_layers=0, ctx_size=n_prompt + 3))
    with InferenceEngine(backend) as engine:
        capped = engine.generate(_request(max_tokens=50))
        assert capped.output_tokens == 3 and capped.finish_reason == "length"
        assert backend.model.device.type == "cpu", "gpu_layers=0 means the CPU"
        with pytest.raises(ContextOverflowError, match=f"{n_prompt + 3}"):
            engine.generate(_request([{"role": "user", "content": "tell me a story " * 20}]))


def test_context_overflow_is_caught_as_the_core_class(backend: TransformersBackend) -> None:
    """``except llamatelemetry.errors.ContextOverflowError`` catches the overflow, with its sizes."""
    too_long = [{"role": "user", "content": "tell me a story " * 200}]
    try:
        backend.generate(_request(too_long))
    except core_errors.ContextOverflowError as caught:
        error = caught
    else:
        pytest.fail("a prompt longer than the context window was generated")
    assert type(error) is ContextOverflowError and isinstance(error, TransformersBackendError)
    assert error.n_ctx == 256 and error.prompt_tokens is not None and error.prompt_tokens > 256
    assert "max_context=" in str(error), "the message names this backend's own setting"


def test_dtype_and_device_are_honoured(tiny_llama_dir: Path) -> None:
    backend = TransformersBackend(tiny_llama_dir, device="cpu", dtype="bfloat16")
    with InferenceEngine(backend) as engine:
        result = engine.generate(_request(max_tokens=3))
        assert backend.model.dtype == torch.bfloat16
    assert result.attributes[names.DTYPE] == "bfloat16"
    assert result.attributes[names.DEVICE] == "cpu"
    assert result.vram_peak_mb is None, "no GPU: unknown, never a made-up 0"
    assert result.output_tokens == 3


def test_objects_the_user_has_are_adopted_as_they_are(llama: Any, tokenizer: Any) -> None:
    backend = TransformersBackend(model=llama, tokenizer=tokenizer, model_name="my-tiny")
    with InMemoryTelemetry() as telemetry, InferenceEngine(backend) as engine:
        engine.generate(_request(max_tokens=2))
        assert telemetry.span("chat my-tiny")
        assert backend.model is llama and backend.tokenizer is tokenizer
    assert llama.device.type == "cpu", "the user's model stays where it was; shutdown does not free it"


# ------------------------------------------------------------------ errors and lookup


def test_missing_folder_and_bad_folders_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderNotFoundError, match="local_files_only=False"):
        TransformersBackend(tmp_path / "nope").start()
    with pytest.raises(ModelFolderNotFoundError, match=r"no config\.json"):
        TransformersBackend(tmp_path).start()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelFolderNotFoundError, match=r"llama\.cpp"):
        TransformersBackend(tmp_path / "model.gguf").start()
    with pytest.raises(TypeError, match="tokenizer="):
        TransformersBackend(model=object())


def test_load_failures_are_the_core_model_load_errors(tmp_path: Path) -> None:
    """A missing folder is a core ModelNotFoundError, a folder transformers cannot load a core ModelLoadError."""
    with pytest.raises(core_errors.ModelNotFoundError) as missing:
        TransformersBackend(tmp_path / "nope").start()
    assert type(missing.value) is ModelFolderNotFoundError and isinstance(missing.value, FileNotFoundError)
    assert missing.value.path == str(tmp_path / "nope")
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(core_errors.ModelLoadError, match="could not load") as unloadable:
        TransformersBackend(tmp_path).start()
    assert type(unloadable.value) is ModelLoadError


def test_a_chat_template_that_rejects_the_messages_is_the_core_error(tiny_llama_dir: Path) -> None:
    """A template that raises on a system message: a core ChatTemplateError that says what to do."""
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
              "{% endif %}{{ m['content'] }}{% endfor %}")
    with InferenceEngine(TransformersBackend(tiny_llama_dir, device="cpu", chat_template=strict)) as engine:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]
        with pytest.raises(core_errors.ChatTemplateError, match="no system role") as raised:
            engine.generate(_request(messages))
        assert type(raised.value) is ChatTemplateError
        assert "text_completion" in str(raised.value)
        assert engine.generate(_request(messages[1:], max_tokens=2)).output_tokens == 2


def test_generate_before_start_is_refused(tiny_llama_dir: Path) -> None:
    with pytest.raises(BackendNotStartedError, match="start"):
        TransformersBackend(tiny_llama_dir).generate(_request())


def test_create_engine_finds_the_registered_backend(tiny_llama_dir: Path) -> None:
    for name in ("transformers", "hf"):
        with create_engine(name, model_path=tiny_llama_dir, device="cpu") as engine:
            assert engine.provider_name == "transformers"
            assert engine.generate(_request(max_tokens=2)).output_tokens == 2
    with pytest.raises(BackendStartError, match="model_path="):
        create_engine("transformers")
    with pytest.raises(BackendStartError, match=r"llama\.cpp"):
        create_engine("transformers", llama_server_url="http://127.0.0.1:8090", model_path=tiny_llama_dir)


def test_core_import_path_resolves_to_the_plugin() -> None:
    from llamatelemetry.backends import TransformersBackend as FromCore

    assert FromCore is TransformersBackend


# ------------------------------------------------------------------ a real GPU


@pytest.mark.gpu
def test_vram_peak_is_the_requests_own_peak_on_cuda(tiny_llama_dir: Path) -> None:
    backend = TransformersBackend(tiny_llama_dir, device="cuda", dtype="float16")
    with InMemoryTelemetry() as telemetry, InferenceEngine(backend) as engine:
        result = engine.generate(_request(max_tokens=16))
        peak_bytes = torch.cuda.max_memory_allocated()
        weights_mb = sum(p.numel() * p.element_size() for p in backend.model.parameters()) / 2**20
        span = telemetry.span("chat tiny-llama")
    peak = peak_bytes / 2**20
    print(f"\nGPU {torch.cuda.get_device_name()}: vram_peak_mb={result.vram_peak_mb:.3f} for 16 tokens "
          f"(tiny Llama, fp16), ttft_ms={result.ttft_ms:.2f}")
    assert result.vram_peak_mb is not None and 0 < result.vram_peak_mb == pytest.approx(peak)
    assert result.vram_peak_mb >= weights_mb, "the peak includes the weights on the GPU"
    attributes = span.attributes or {}
    assert attributes["llamatelemetry.response.vram_peak"] == int(result.vram_peak_mb * 2**20)
    assert attributes[names.DEVICE].startswith("cuda")
    assert attributes[names.CUDA_PEAK_AFTER] == peak_bytes
    assert attributes[names.CUDA_ALLOCATED_AFTER] <= attributes[names.CUDA_RESERVED_AFTER]
