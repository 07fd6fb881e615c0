"""Putting GenAI semantic-convention attributes on spans from requests and results."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from llamatelemetry.inference.base import InferenceRequest, InferenceResult

__all__ = [
    "set_gen_ai_attrs",
    "set_response_attrs",
    "request_attributes",
    "sampling_attributes",
    "SAMPLING_KEYS",
    "response_attributes",
    "model_display_name",
    "span_name",
    "with_compat",
]


def model_display_name(model: str | os.PathLike[str] | None) -> str | None:
    """A model name for telemetry: a GGUF or local file path becomes its file stem; hub ids stay."""
    if model is None:
        return None
    return _display_name(os.fspath(model))


@functools.lru_cache(maxsize=256)
def _display_name(text: str) -> str:
    # Called several times per request with the same few names: the string work is done once per name.
    looks_like_path = (text.lower().endswith((".gguf", ".bin", ".safetensors"))
                       or text.startswith(("/", "./", "../", "~")) or "\\" in text)
    if looks_like_path:
        base = re.split(r"[\\/]", text.rstrip("/\\"))[-1] or text
        stem, ext = os.path.splitext(base)
        return stem if ext.lower() in (".gguf", ".bin", ".safetensors") else base
    return text


def span_name(operation: str, model: str | None) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, or the operation alone without a model."""
    return f"{operation} {model}" if model else operation


def _compat_options() -> frozenset[str]:
    from llamatelemetry._runtime import current

    telemetry = current()
    return telemetry.settings.semconv_compat if telemetry is not None else frozenset()


def with_compat(attributes: dict[str, Any], compat: frozenset[str] | None = None) -> dict[str, Any]:
    """Add deprecated ``gen_ai.*`` or legacy ``llm.*`` copies when the compatibility switch asks for them."""
    options = _compat_options() if compat is None else compat
    if not options:
        return attributes
    if "deprecated" in options:
        for old, new in gen_ai.DEPRECATED_ALIASES.items():
            if new in attributes:
                attributes[old] = attributes[new]
    if "llm" in options:
        for old, new in gen_ai.LEGACY_LLM_ALIASES.items():
            if new in attributes:
                attributes[old] = attributes[new]
    return attributes


#: The sampling settings ``sampling_attributes`` knows, by the names OpenAI-style APIs and llama.cpp use.
SAMPLING_KEYS: tuple[str, ...] = ("max_tokens", "temperature", "top_p", "top_k", "frequency_penalty",
                                  "presence_penalty", "repeat_penalty", "seed", "stop")
_FLOAT_SETTINGS: tuple[tuple[str, str], ...] = (
    ("temperature", gen_ai.GEN_AI_REQUEST_TEMPERATURE), ("top_p", gen_ai.GEN_AI_REQUEST_TOP_P),
    ("top_k", gen_ai.GEN_AI_REQUEST_TOP_K), ("repeat_penalty", names.REQUEST_REPEAT_PENALTY),
)
# A penalty of 0 is "off": recorded only when it does something.
_PENALTIES: tuple[tuple[str, str], ...] = (
    ("frequency_penalty", gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY),
)


def _real(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def sampling_attributes(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``gen_ai.request.*`` attributes from sampling settings named as in ``SAMPLING_KEYS`` (others ignored).

    The one mapping every integration uses: values of the wrong type, ``max_tokens`` below 1 (llama.cpp's
    "until the context is full") and penalties of 0 are left out; ``stop`` may be a string or a list.
    """
    attributes: dict[str, Any] = {}
    max_tokens = settings.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1:
        attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    for key, attribute in _FLOAT_SETTINGS:
        value = _real(settings.get(key))
        if value is not None:
            attributes[attribute] = value
    for key, attribute in _PENALTIES:
        value = _real(settings.get(key))
        if value:
            attributes[attribute] = value
    seed = settings.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        attributes[gen_ai.GEN_AI_REQUEST_SEED] = seed
    stop = settings.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)] if isinstance(
        stop, (list, tuple)) else []
    if stops:
        attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES] = stops
    return attributes


def request_attributes(
    request: InferenceRequest | None,
    *,
    operation: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
) -> dict[str, Any]:
    """The request-side attributes (operation, provider, model, sampling, limits, server) as a dict."""
    op = operation or (request.operation if request is not None else gen_ai.OPERATION_CHAT)
    attributes: dict[str, Any] = {gen_ai.GEN_AI_OPERATION_NAME: op}
    if provider:
        attributes[gen_ai.GEN_AI_PROVIDER_NAME] = provider
    model_name = model_display_name(model or (request.model if request is not None else None))
    if model_name:
        attributes[gen_ai.GEN_AI_REQUEST_MODEL] = model_name
    if server_address:
        attributes[gen_ai.SERVER_ADDRESS] = server_address
    if server_port is not None:
        attributes[gen_ai.SERVER_PORT] = int(server_port)
    if request is not None:
        sampling = request.sampling
        attributes.update(sampling_attributes({
            "max_tokens": request.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k, "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty, "repeat_penalty": sampling.repeat_penalty,
            "seed": sampling.seed, "stop": list(sampling.stop),
        }))
        if request.stream:
            attributes[gen_ai.GEN_AI_REQUEST_STREAM] = True
        if request.conversation_id:
            attributes[gen_ai.GEN_AI_CONVERSATION_ID] = request.conversation_id
        attributes[names.REQUEST_ID] = request.request_id
    return attributes


def set_gen_ai_attrs(
    span: Span,
    request: InferenceRequest | None,
    *,
    operation: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
) -> None:
    """Emit the ``gen_ai.*`` request attributes of ``request`` on ``span`` (nothing if it is not recording)."""
    if not span.is_recording():
        return
    span.set_attributes(with_compat(request_attributes(
        request, operation=operation, provider=provider, model=model,
        server_address=server_address, server_port=server_port,
    )))


def response_attributes(result: InferenceResult) -> dict[str, Any]:
    """The response-side attributes (usage, finish reason, response model and id, speeds) as a dict."""
    attributes: dict[str, Any] = {}
    if result.input_tokens is not None:
        attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] = int(result.input_tokens)
    if result.output_tokens is not None:
        attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] = int(result.output_tokens)
    if result.cached_input_tokens is not None:
        attributes[gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = int(result.cached_input_tokens)
    if result.finish_reason:
        attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = [result.finish_reason]
    model = model_display_name(result.model)
    if model:
        attributes[gen_ai.GEN_AI_RESPONSE_MODEL] = model
    if result.response_id:
        attributes[gen_ai.GEN_AI_RESPONSE_ID] = result.response_id
    if result.ttft_ms is not None:
        attributes[names.RESPONSE_TIME_TO_FIRST_TOKEN] = result.ttft_ms / 1e3
    if result.tps is not None:
        attributes[names.RESPONSE_TOKENS_PER_SECOND] = float(result.tps)
    if result.decode_tps is not None:
        attributes[names.RESPONSE_DECODE_TOKENS_PER_SECOND] = float(result.decode_tps)
    if result.prefill_tps is not None:
        attributes[names.RESPONSE_PREFILL_TOKENS_PER_SECOND] = float(result.prefill_tps)
    if result.queue_delay_ms is not None:
        attributes[names.REQUEST_QUEUE_DELAY] = result.queue_delay_ms / 1e3
    if result.vram_peak_mb is not None:
        attributes[names.RESPONSE_VRAM_PEAK] = int(result.vram_peak_mb * 1024 * 1024)
    if result.attributes:
        attributes.update(_attribute_values(result.attributes))
    return attributes


def set_response_attrs(span: Span, result: InferenceResult) -> None:
    """Emit the response attributes of ``result`` on ``span`` (nothing if it is not recording)."""
    if span.is_recording():
        span.set_attributes(with_compat(response_attributes(result)))


def _attribute_values(values: Mapping[str, Any]) -> dict[str, Any]:
    # OTel attribute values are str/bool/int/float or homogeneous sequences of them; drop the rest.
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (str, bool, int, float)):
            cleaned[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value):
            cleaned[key] = list(value)
    return cleaned
