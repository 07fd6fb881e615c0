"""KV-cache and llama.cpp perf-counter figures: the cache's size, and its use and the counters after a request.

The size goes on the ``llama_cpp.context.create`` span; the rest on the request span. llama.cpp's
own perf counters are reported beside the plugin's clock, never instead of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.gguf_file import GGML_TYPE_SIZES

__all__ = ["kv_cache_bytes", "reset_perf_counters", "request_figures"]

log = logging.getLogger("llamatelemetry.llamacpp")


def kv_cache_bytes(llama_cpp: Any, llm: Any, n_ctx: int) -> int | None:
    """The KV cache's size from the model's shape; ``None`` for the caches this formula does not describe."""
    try:
        model = llm.model
        metadata: Mapping[str, str] = llm.metadata or {}
        arch = metadata.get("general.architecture")
        if not arch or llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            return None
        if llama_cpp.llama_model_n_swa(model) > 0 or f"{arch}.attention.kv_lora_rank" in metadata:
            return None  # sliding-window and latent-attention caches are sized differently
        n_layer = int(llama_cpp.llama_model_n_layer(model))
        n_head = int(llama_cpp.llama_model_n_head(model))
        n_head_kv = int(llama_cpp.llama_model_n_head_kv(model))
        n_embd = int(llama_cpp.llama_model_n_embd(model))
        if min(n_layer, n_head, n_head_kv, n_embd) <= 0:
            return None
        key_length = int(metadata.get(f"{arch}.attention.key_length", n_embd // n_head))
        value_length = int(metadata.get(f"{arch}.attention.value_length", n_embd // n_head))
        params = llm.context_params
        k_block = GGML_TYPE_SIZES.get(int(params.type_k))
        v_block = GGML_TYPE_SIZES.get(int(params.type_v))
        if k_block is None or v_block is None:
            return None
        k_row = n_head_kv * key_length * k_block[1] // k_block[0]
        v_row = n_head_kv * value_length * v_block[1] // v_block[0]
        return n_layer * n_ctx * (k_row + v_row)
    except (AttributeError, TypeError, ValueError):  # per-layer arrays in metadata, an older binding
        log.debug("KV cache size not computable for this model", exc_info=True)
        return None


def reset_perf_counters(llama_cpp: Any, llm: Any, ctx: Any) -> bool:
    """Zero llama.cpp's perf counters of ``ctx`` before a request; return whether the context keeps them."""
    perf_enabled = not bool(getattr(llm.context_params, "no_perf", False))
    if perf_enabled:
        llama_cpp.llama_perf_context_reset(ctx)
    return perf_enabled


def request_figures(llama_cpp: Any, llm: Any, ctx: Any, n_ctx: int, perf_enabled: bool) -> dict[str, Any]:
    """KV cache use and llama.cpp's perf counters after a request, as request-span attributes."""
    memory = llama_cpp.llama_get_memory(ctx)
    used = int(llama_cpp.llama_memory_seq_pos_max(memory, 0)) + 1 if memory is not None else int(llm.n_tokens)
    usage = used / n_ctx
    attributes: dict[str, Any] = {names.KV_CACHE_USED_TOKENS: used, names.KV_CACHE_USAGE: usage}
    if perf_enabled:
        perf = llama_cpp.llama_perf_context(ctx)
        attributes.update({
            names.LLAMA_PROMPT_EVAL_TOKENS: int(perf.n_p_eval),
            names.LLAMA_PROMPT_EVAL_DURATION: float(perf.t_p_eval_ms) / 1e3,
            names.LLAMA_EVAL_TOKENS: int(perf.n_eval),
            names.LLAMA_EVAL_DURATION: float(perf.t_eval_ms) / 1e3,
        })
        reused_graphs = getattr(perf, "n_reused", None)
        if reused_graphs is not None:
            attributes[names.LLAMA_GRAPHS_REUSED] = int(reused_graphs)
    return attributes
