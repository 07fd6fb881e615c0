"""Tests of the inference records: sampling, CUDA config, ``InferenceRequest`` and ``InferenceResult``."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from llamatelemetry.errors import LlamaTelemetryError, ValidationError
from llamatelemetry.inference.base import MESSAGE_ROLES, InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams, parse_tensor_split

USER = [{"role": "user", "content": "Hi"}]
SECRET = "TOP-SECRET-PROMPT-7f3a9c"


def assert_validation(excinfo: pytest.ExceptionInfo[ValidationError], field: str, allowed: str) -> None:
    """The error names the field and says what is allowed."""
    err = excinfo.value
    assert isinstance(err, ValidationError)
    assert isinstance(err, ValueError)  # callers may catch the builtin
    assert isinstance(err, LlamaTelemetryError)
    assert err.field == field
    message = str(err)
    assert field in message
    assert allowed in message, message


# ----------------------------------------------------------------------------- SamplingParams


def test_sampling_defaults_match_api_reference() -> None:
    params = SamplingParams()
    assert params.temperature == 0.8
    assert params.top_p == 0.95
    assert params.top_k == 40
    assert params.repeat_penalty == 1.1
    assert params.frequency_penalty == 0.0
    assert params.presence_penalty == 0.0
    assert params.seed is None
    assert params.stop == ()
    assert params == SamplingParams(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.1)
    assert params.greedy is False


def test_sampling_is_frozen() -> None:
    params = SamplingParams()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        params.temperature = 0.1  # type: ignore[misc]


def test_greedy_when_temperature_zero() -> None:
    assert SamplingParams(temperature=0).greedy is True
    assert SamplingParams(temperature=0.0).greedy is True


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"temperature": -0.01}, "temperature", ">= 0"),
        ({"temperature": -1}, "temperature", ">= 0"),
        ({"temperature": True}, "temperature", ">= 0"),
        ({"temperature": "0.5"}, "temperature", ">= 0"),
        ({"temperature": None}, "temperature", ">= 0"),
        ({"temperature": math.nan}, "temperature", ">= 0"),
        ({"top_p": 0}, "top_p", "(0, 1]"),
        ({"top_p": 0.0}, "top_p", "(0, 1]"),
        ({"top_p": 1.0001}, "top_p", "(0, 1]"),
        ({"top_p": -0.5}, "top_p", "(0, 1]"),
        ({"top_p": math.inf}, "top_p", "(0, 1]"),
        ({"top_p": False}, "top_p", "(0, 1]"),
        ({"top_k": -1}, "top_k", ">= 0"),
        ({"top_k": 1.5}, "top_k", ">= 0"),
        ({"top_k": 40.0}, "top_k", ">= 0"),
        ({"top_k": True}, "top_k", ">= 0"),
        ({"repeat_penalty": 0}, "repeat_penalty", "> 0"),
        ({"repeat_penalty": -1.1}, "repeat_penalty", "> 0"),
        ({"frequency_penalty": 2.01}, "frequency_penalty", "[-2, 2]"),
        ({"presence_penalty": -2.5}, "presence_penalty", "[-2, 2]"),
        ({"seed": "7"}, "seed", "integer"),
        ({"seed": 1.0}, "seed", "integer"),
        ({"seed": True}, "seed", "integer"),
        ({"stop": [""]}, "stop", "non-empty strings"),
        ({"stop": ["ok", 3]}, "stop", "non-empty strings"),
    ],
)
def test_sampling_validation(kwargs: dict[str, Any], field: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        SamplingParams(**kwargs)
    assert_validation(excinfo, field, allowed)
    assert str(excinfo.value).startswith(f"SamplingParams.{field}=")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0},
        {"temperature": 2.0},
        {"top_p": 1},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"top_k": 0},
        {"top_k": 1},
        {"repeat_penalty": 1.0},
        {"frequency_penalty": -2},
        {"presence_penalty": 2.0},
        {"seed": 0},
        {"seed": -1},
    ],
)
def test_sampling_boundary_values_accepted(kwargs: dict[str, Any]) -> None:
    params = SamplingParams(**kwargs)
    for key, value in kwargs.items():
        assert getattr(params, key) == value


def test_stop_accepts_string_or_list() -> None:
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop=("x",)).stop == ("x",)


@pytest.mark.parametrize("field", ["temperature", "repeat_penalty"])
def test_infinite_numbers_rejected(field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        SamplingParams(**{field: math.inf})
    assert excinfo.value.field == field


@pytest.mark.parametrize("stop", [None, 5])
def test_stop_none_or_non_iterable_is_not_a_bare_type_error(stop: Any) -> None:
    # OpenAI-style clients pass stop=None for "no stop sequences"; either reading is fine, a TypeError is not.
    try:
        params = SamplingParams(stop=stop)
    except ValidationError as exc:
        assert exc.field == "stop"
    else:
        assert stop is None and params.stop == ()


# ----------------------------------------------------------------------------- CudaInferenceConfig


def test_cuda_config_defaults_match_api_reference() -> None:
    config = CudaInferenceConfig()
    assert config.gpu_layers == 99
    assert config.tensor_split_values == (1.0, 0.0)
    assert config.ctx_size == 4096
    assert config.batch_size == 512
    assert config.flash_attn is True
    assert config == CudaInferenceConfig(gpu_layers=99, tensor_split="1.0,0.0", ctx_size=4096, batch_size=512,
                                         flash_attn=True)
    assert config.n_gpus == 1


@pytest.mark.parametrize(
    ("value", "normalized", "values", "n_gpus"),
    [
        ("1.0,0.0", "1.0,0.0", (1.0, 0.0), 1),
        (" 0.5 , 0.5 ", "0.5,0.5", (0.5, 0.5), 2),
        ("0,1", "0.0,1.0", (0.0, 1.0), 1),
        ("3,1,0,2", "3.0,1.0,0.0,2.0", (3.0, 1.0, 0.0, 2.0), 3),
        ("1", "1.0", (1.0,), 1),
        ([0.25, 0.75], "0.25,0.75", (0.25, 0.75), 2),
        ((1, 0), "1.0,0.0", (1.0, 0.0), 1),
    ],
)
def test_tensor_split_normalization(value: Any, normalized: str, values: tuple[float, ...], n_gpus: int) -> None:
    config = CudaInferenceConfig(tensor_split=value)
    assert config.tensor_split == normalized
    assert config.tensor_split_values == values
    assert config.n_gpus == n_gpus
    # The text spelling and the list spelling of the same split give equal configs.
    assert config == CudaInferenceConfig(tensor_split=list(values))


@pytest.mark.parametrize(
    "value",
    ["", "   ", "a,b", "1,a", "-1,2", "0,0", "0", "1,,2", ",1", "1,", "nan,1", "inf,1", "1;0",
     [], [-1, 2], [0, 0], ["a", "b"], [1, math.nan], [1, math.inf], None, 5],
)
def test_bad_tensor_split_rejected(value: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        CudaInferenceConfig(tensor_split=value)
    assert_validation(excinfo, "tensor_split", "non-negative numbers with a positive sum")
    assert "e.g. '1.0,0.0'" in str(excinfo.value)


def test_parse_tensor_split_directly() -> None:
    assert parse_tensor_split("2,2") == (2.0, 2.0)
    with pytest.raises(ValidationError, match="tensor_split"):
        parse_tensor_split("1,,2")


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"gpu_layers": -2}, "gpu_layers", ">= -1"),
        ({"gpu_layers": 1.5}, "gpu_layers", ">= -1"),
        ({"gpu_layers": True}, "gpu_layers", ">= -1"),
        ({"ctx_size": -1}, "ctx_size", ">= 0"),
        ({"ctx_size": "4096"}, "ctx_size", ">= 0"),
        ({"batch_size": 0}, "batch_size", ">= 1"),
        ({"batch_size": -512}, "batch_size", ">= 1"),
        ({"flash_attn": 1}, "flash_attn", "True or False"),
        ({"flash_attn": "yes"}, "flash_attn", "True or False"),
    ],
)
def test_cuda_config_validation(kwargs: dict[str, Any], field: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        CudaInferenceConfig(**kwargs)
    assert_validation(excinfo, field, allowed)


def test_cuda_config_boundary_values_accepted() -> None:
    config = CudaInferenceConfig(gpu_layers=-1, ctx_size=0, batch_size=1, flash_attn=False)
    assert (config.gpu_layers, config.ctx_size, config.batch_size, config.flash_attn) == (-1, 0, 1, False)
    assert CudaInferenceConfig(gpu_layers=0).gpu_layers == 0


# ----------------------------------------------------------------------------- InferenceRequest


def test_request_defaults() -> None:
    request = InferenceRequest(messages=USER)
    assert request.messages == USER
    assert request.max_tokens == 256
    assert request.sampling == SamplingParams()
    assert request.model is None
    assert request.stream is False
    assert request.conversation_id is None
    assert request.operation == "chat"


def test_request_copies_messages() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    request = InferenceRequest(messages=messages)
    messages[0]["content"] = "changed"
    messages.append({"role": "user", "content": "more"})
    assert request.messages == [{"role": "user", "content": "Hi"}]


def test_request_id_is_generated_and_unique() -> None:
    ids = {InferenceRequest(messages=USER).request_id for _ in range(500)}
    assert len(ids) == 500
    assert all(isinstance(i, str) and len(i) >= 16 for i in ids)


def test_explicit_request_id_is_kept() -> None:
    assert InferenceRequest(messages=USER, request_id="req-1").request_id == "req-1"


@pytest.mark.parametrize("role", MESSAGE_ROLES)
def test_every_known_role_is_accepted(role: str) -> None:
    assert InferenceRequest(messages=[{"role": role, "content": "x"}]).messages[0]["role"] == role


def test_message_content_may_be_parts_or_none() -> None:
    request = InferenceRequest(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
        {"role": "assistant", "content": None},
    ])
    assert request.prompt_text == "Be brief.\npart one\npart two"


def test_tuple_of_messages_accepted() -> None:
    assert InferenceRequest(messages=tuple(USER)).messages == USER  # type: ignore[arg-type]


@pytest.mark.parametrize("max_tokens", [0, -1, -100, True, False, 1.5, "10", None])
def test_bad_max_tokens(max_tokens: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        InferenceRequest(messages=USER, max_tokens=max_tokens)
    assert_validation(excinfo, "max_tokens", "an integer >= 1")


def test_max_tokens_one_accepted() -> None:
    assert InferenceRequest(messages=USER, max_tokens=1).max_tokens == 1


@pytest.mark.parametrize(
    ("messages", "field", "allowed"),
    [
        ([], "messages", "non-empty list"),
        ((), "messages", "non-empty list"),
        ("Hi there", "messages", "non-empty list"),
        (b"Hi there", "messages", "non-empty list"),
        ({"role": "user", "content": "Hi"}, "messages", "non-empty list"),
        (None, "messages", "non-empty list"),
        (["Hi there"], "messages[0]", 'a dict with "role" and "content"'),
        ([{"role": "user", "content": "ok"}, ("user", "Hi")], "messages[1]", 'a dict with "role" and "content"'),
        ([{"role": "wizard", "content": "Hi"}], "messages[0].role", "one of system, developer, user, assistant, tool"),
        ([{"role": "USER", "content": "Hi"}], "messages[0].role", "one of system"),
        ([{"content": "Hi"}], "messages[0].role", "one of system"),
        ([{"role": "user", "content": 42}], "messages[0].content", "a string or a list of content parts"),
        ([{"role": "user", "content": {"text": "Hi"}}], "messages[0].content", "a string or a list"),
    ],
)
def test_bad_messages(messages: Any, field: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        InferenceRequest(messages=messages)
    assert_validation(excinfo, field, allowed)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": SECRET},
        {"messages": SECRET.encode()},
        {"messages": [SECRET]},
        {"messages": [{"role": "user", "content": SECRET}, SECRET]},
        {"messages": [{"role": "wizard", "content": SECRET}]},
        {"messages": [{"role": "user", "content": {"text": SECRET}}]},
        {"messages": [{"role": "user", "content": 1}, {"role": "user", "content": SECRET}]},
        {"messages": [{"role": "user", "content": SECRET}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": SECRET}], "sampling": {"prompt": SECRET}},
        {"messages": [{"role": "user", "content": SECRET}], "request_id": ""},
        {"messages": [{"role": "user", "content": SECRET}], "operation": "embeddings"},
    ],
)
def test_validation_errors_never_contain_prompt_text(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as excinfo:
        InferenceRequest(**kwargs)
    err = excinfo.value
    for text in (str(err), repr(err), repr(err.value), repr(err.args)):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"sampling": {"temperature": 0}}, "sampling", "SamplingParams"),
        ({"request_id": ""}, "request_id", "non-empty string"),
        ({"request_id": 7}, "request_id", "non-empty string"),
        ({"operation": "embeddings"}, "operation", "'chat' or 'text_completion'"),
    ],
)
def test_other_request_fields_validated(kwargs: dict[str, Any], field: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        InferenceRequest(messages=USER, **kwargs)
    assert_validation(excinfo, field, allowed)


def test_text_completion_operation_accepted() -> None:
    request = InferenceRequest(messages=USER, operation="text_completion")
    assert request.operation == "text_completion"
    assert request.prompt_text == "Hi"


# ----------------------------------------------------------------------------- InferenceResult and LLMBackend


def test_result_unknown_figures_are_none_not_zero() -> None:
    result = InferenceResult(text="hello")
    for field in attrs.fields(InferenceResult):
        if field.name in ("text", "attributes"):
            continue
        assert getattr(result, field.name) is None, field.name
    assert result.attributes == {}


def test_result_attributes_are_not_shared_between_instances() -> None:
    first, second = InferenceResult(text="a"), InferenceResult(text="b")
    assert first.attributes is not second.attributes


def test_llm_backend_protocol_is_runtime_checkable() -> None:
    class Complete:
        provider_name = "test"

        def start(self) -> None:
            return None

        def generate(self, request: InferenceRequest) -> InferenceResult:
            return InferenceResult(text=request.prompt_text)

        def shutdown(self) -> None:
            return None

    class NoShutdown:
        def start(self) -> None:
            return None

        def generate(self, request: InferenceRequest) -> InferenceResult:
            return InferenceResult(text="")

    assert isinstance(Complete(), LLMBackend)
    assert not isinstance(NoShutdown(), LLMBackend)
