"""Telemetry names the llama.cpp plugin emits under the ``llamatelemetry.*`` namespace.

Standard names (``gen_ai.*``) come from ``llamatelemetry.semconv.gen_ai``; these cover what the
GenAI conventions have no name for. Every one is listed in the telemetry reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.llamatelemetry import (  # shared with every in-process backend
    MODEL_LOAD_DURATION as MODEL_LOAD_DURATION,
)
from llamatelemetry.semconv.llamatelemetry import (
    MODEL_PARAMETERS as MODEL_PARAMETERS,
)
from llamatelemetry.semconv.llamatelemetry import (
    MODEL_PATH as MODEL_PATH,
)
from llamatelemetry.semconv.llamatelemetry import (
    MODEL_TRAINED_CONTEXT as MODEL_TRAINED_CONTEXT,
)
from llamatelemetry.semconv.llamatelemetry import (
    MODEL_VOCAB_SIZE as MODEL_VOCAB_SIZE,
)
from llamatelemetry.semconv.llamatelemetry import (
    PHASE as PHASE,
)
from llamatelemetry.semconv.llamatelemetry import (
    PHASE_DECODE as PHASE_DECODE,
)
from llamatelemetry.semconv.llamatelemetry import (
    PHASE_PREFILL as PHASE_PREFILL,
)
from llamatelemetry.semconv.llamatelemetry import (
    PHASE_TOKENS as PHASE_TOKENS,
)
from llamatelemetry.semconv.llamatelemetry import (
    PHASE_TOKENS_PER_SECOND as PHASE_TOKENS_PER_SECOND,
)

# ---- span names (INTERNAL, in-process llama-cpp-python); the request span is "{operation} {model}"
SPAN_MODEL_LOAD: Final = "llama_cpp.model.load"
SPAN_CONTEXT_CREATE: Final = "llama_cpp.context.create"
SPAN_PREFILL: Final = "llama_cpp.prefill"
SPAN_DECODE: Final = "llama_cpp.decode"

# ---- model (attributes of the model-load span)
MODEL_FILE_SIZE: Final = "llamatelemetry.model.file_size"  # By
MODEL_MMAP: Final = "llamatelemetry.model.mmap"
#: The served model's GGUF file type as llama.cpp names it (``Q4_K_M``, ``F16``): client spans, from ``/v1/models``.
MODEL_FILE_TYPE: Final = "llamatelemetry.model.file_type"
#: Bytes of the served model's tensors, as the server reports them (``/v1/models`` ``meta.size``).
MODEL_SIZE: Final = "llamatelemetry.model.size"  # By

# ---- context (attributes of the context-create span)
CONTEXT_SIZE: Final = "llamatelemetry.context.size"  # n_ctx, tokens
CONTEXT_BATCH_SIZE: Final = "llamatelemetry.context.batch_size"  # n_batch, tokens
CONTEXT_FLASH_ATTENTION: Final = "llamatelemetry.context.flash_attention"
KV_CACHE_SIZE: Final = "llamatelemetry.kv_cache.size"  # By
#: Tokens held in the KV cache after the request (in-process) or in the slot (server).
KV_CACHE_USED_TOKENS: Final = "llamatelemetry.kv_cache.used_tokens"
#: Share of the context the KV cache holds after the request, 0..1.
KV_CACHE_USAGE: Final = "llamatelemetry.kv_cache.usage"

# ---- phases (attributes of prefill/decode spans)
DECODE_CALLS: Final = "llamatelemetry.decode.calls"
#: Which phase a ``llama_decode`` call served, on the per-call metrics: ``prefill`` or ``decode``.

# ---- llama.cpp's own counters, recorded beside our measurements (never instead of them)
LLAMA_PROMPT_EVAL_TOKENS: Final = "llamatelemetry.llama_cpp.perf.prompt_eval_tokens"
LLAMA_PROMPT_EVAL_DURATION: Final = "llamatelemetry.llama_cpp.perf.prompt_eval_duration"  # s
LLAMA_EVAL_TOKENS: Final = "llamatelemetry.llama_cpp.perf.eval_tokens"
LLAMA_EVAL_DURATION: Final = "llamatelemetry.llama_cpp.perf.eval_duration"  # s
#: Times llama.cpp reused a compute graph instead of building one (``llama_perf_context_data.n_reused``).
LLAMA_GRAPHS_REUSED: Final = "llamatelemetry.llama_cpp.perf.graphs_reused"

# ---- the server's ``timings`` object, recorded on CLIENT spans beside the client's clock
TIMINGS_CACHE_N: Final = "llamatelemetry.llama_cpp.timings.cache_n"
TIMINGS_PROMPT_N: Final = "llamatelemetry.llama_cpp.timings.prompt_n"
TIMINGS_PROMPT_MS: Final = "llamatelemetry.llama_cpp.timings.prompt_ms"
TIMINGS_PROMPT_PER_SECOND: Final = "llamatelemetry.llama_cpp.timings.prompt_per_second"
TIMINGS_PREDICTED_N: Final = "llamatelemetry.llama_cpp.timings.predicted_n"
TIMINGS_PREDICTED_MS: Final = "llamatelemetry.llama_cpp.timings.predicted_ms"
TIMINGS_PREDICTED_PER_SECOND: Final = "llamatelemetry.llama_cpp.timings.predicted_per_second"

# ---- streaming, client side
#: Tokens carried by each streamed chunk are not always one: chunks and tokens are both counted.
STREAM_CHUNKS: Final = "llamatelemetry.stream.chunks"

# ---- metrics (histograms unless noted)
METRIC_DECODE_DURATION: Final = "llamatelemetry.llama_cpp.decode.duration"  # s, per llama_decode call
METRIC_DECODE_BATCH_SIZE: Final = "llamatelemetry.llama_cpp.decode.batch_size"  # {token}, per call
METRIC_MODEL_LOAD_DURATION: Final = "llamatelemetry.llama_cpp.model.load.duration"  # s
METRIC_KV_CACHE_USAGE: Final = "llamatelemetry.llama_cpp.kv_cache.usage"  # gauge, 0..1

#: Server /metrics: ``llamacpp:<name>`` becomes ``llamatelemetry.llama_cpp.server.<name>``
#: (counters lose their ``_total`` suffix, as OpenTelemetry names do).
SERVER_METRIC_PREFIX: Final = "llamatelemetry.llama_cpp.server."
#: Server /slots: busy and total slots.
METRIC_SERVER_SLOTS_BUSY: Final = "llamatelemetry.llama_cpp.server.slots.busy"
METRIC_SERVER_SLOTS_TOTAL: Final = "llamatelemetry.llama_cpp.server.slots.total"


# ---- finish reasons: llama.cpp's stop types and OpenAI-style reasons -> semantic-convention values
FINISH_REASONS: Final[dict[str, str]] = {
    "stop": gen_ai.FINISH_REASON_STOP, "eos": gen_ai.FINISH_REASON_STOP, "word": gen_ai.FINISH_REASON_STOP,
    "limit": gen_ai.FINISH_REASON_LENGTH, "length": gen_ai.FINISH_REASON_LENGTH,
    "tool_calls": "tool_call", "tool_call": "tool_call", "function_call": "tool_call",
    "content_filter": "content_filter", "error": "error",
}


def semconv_finish_reason(reason: str | None) -> str | None:
    """A semantic-convention finish reason for llama.cpp's (``eos``/``word``/``stop`` -> stop, ``limit`` -> length)."""
    if not reason or reason == "none":
        return None
    return FINISH_REASONS.get(reason, reason)


# llama.cpp's model descriptions (llama_model_ftype_name) -> its file type names: "Q4_K - Medium" -> Q4_K_M.
_FTYPE_SUFFIXES: Final = {"Small": "_S", "Medium": "_M", "Large": "_L"}


def file_type_name(description: str | None) -> str | None:
    """llama.cpp's file type name (``Q4_K_M``) for its description (``"Q4_K - Medium"``, ``"all F32"``)."""
    if not description:
        return None
    text = description.strip().removeprefix("all ").removesuffix(" (guessed)")
    base, _, detail = text.partition(" - ")
    return base + _FTYPE_SUFFIXES.get(detail.strip(), "")


def served_model_attributes(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes for the model a llama.cpp server reports in ``/v1/models`` (its ``meta``); unknowns left out."""
    attributes: dict[str, Any] = {}
    file_type = file_type_name(meta.get("ftype")) if isinstance(meta.get("ftype"), str) else None
    if file_type:
        attributes[MODEL_FILE_TYPE] = file_type
    for key, name in (("size", MODEL_SIZE), ("n_params", MODEL_PARAMETERS), ("n_vocab", MODEL_VOCAB_SIZE),
                      ("n_ctx_train", MODEL_TRAINED_CONTEXT)):
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            attributes[name] = value
    return attributes
