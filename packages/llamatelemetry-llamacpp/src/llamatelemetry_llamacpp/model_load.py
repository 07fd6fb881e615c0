"""Loading a model with llama-cpp-python: the lazy import, the load/context split, the load and context spans' figures.

llama-cpp-python is imported only when a model is loaded; without it, the error is the install command.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import time
from collections.abc import Mapping
from typing import Any

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.backend_errors import LlamaCppNotInstalledError, ModelLoadError
from llamatelemetry_llamacpp.kv_and_perf import kv_cache_bytes

__all__ = ["import_llama_cpp", "construct_llama", "check_options", "load_error", "load_attributes", "context_span"]


def import_llama_cpp() -> Any:
    """Import llama-cpp-python; without it, raise ``LlamaCppNotInstalledError`` (the install command)."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "llama_cpp":
            raise  # llama_cpp is there but one of its own imports failed: that error is the useful one
        raise LlamaCppNotInstalledError() from exc


# The load span ends, and the context span starts, when llama-cpp-python creates the context. Llama()
# does both in one call, so the loading thread marks the moment from a LlamaContext subclass put in
# place only while it loads (other threads creating a context meanwhile are not recorded).
_load_lock = threading.Lock()
_load_marks = threading.local()


def _timed_context_class(internals: Any) -> Any:
    original = internals.LlamaContext
    cached = getattr(internals, "_llamatelemetry_timed_context", None)
    if cached is not None and cached.__bases__ == (original,):
        return cached

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        marks: list[int] | None = getattr(_load_marks, "marks", None)
        if marks is not None:
            marks.append(time.time_ns())
        original.__init__(self, *args, **kwargs)
        if marks is not None:
            marks.append(time.time_ns())

    timed = type("LlamaContext", (original,), {"__init__": __init__, "__module__": original.__module__,
                                               "__qualname__": original.__qualname__})
    internals._llamatelemetry_timed_context = timed
    return timed


def construct_llama(llama_cpp: Any, path: str, options: Mapping[str, Any], marks: list[int]) -> Any:
    """``llama_cpp.Llama(path, **options)``; ``marks`` gets the wall-clock ns its context creation starts and ends."""
    internals: Any = getattr(llama_cpp, "_internals", None) or importlib.import_module("llama_cpp._internals")
    if not hasattr(internals, "LlamaContext"):  # a llama-cpp-python without the hook point: no split
        return llama_cpp.Llama(model_path=path, **options)
    with _load_lock:
        original = internals.LlamaContext
        internals.LlamaContext = _timed_context_class(internals)
        _load_marks.marks = marks
        try:
            llm = llama_cpp.Llama(model_path=path, **options)
        finally:
            internals.LlamaContext = original
            _load_marks.marks = None
    return llm


def _uses_mmap(llama_cpp: Any, params: Any) -> bool | None:
    mode = getattr(params, "load_mode", None)
    if isinstance(mode, int):
        mmap_modes = {getattr(llama_cpp, n, None) for n in ("LLAMA_LOAD_MODE_MMAP", "LLAMA_LOAD_MODE_MMAP_MLOCK")}
        return mode in mmap_modes
    use_mmap = getattr(params, "use_mmap", None)
    return bool(use_mmap) if use_mmap is not None else None


def _flash_attention(llama_cpp: Any, params: Any) -> bool | None:
    kind = getattr(params, "flash_attn_type", None)
    if isinstance(kind, int):
        if kind == getattr(llama_cpp, "LLAMA_FLASH_ATTN_TYPE_ENABLED", 1):
            return True
        if kind == getattr(llama_cpp, "LLAMA_FLASH_ATTN_TYPE_DISABLED", 0):
            return False
        return None  # AUTO: llama.cpp decides per device, and does not say
    flag = getattr(params, "flash_attn", None)
    return bool(flag) if flag is not None else None


def check_options(llama_cpp: Any, options: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the options ``llama_cpp.Llama`` does not take."""
    # Llama() swallows unknown keyword arguments; a typo would silently do nothing.
    accepted = inspect.signature(llama_cpp.Llama.__init__).parameters
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise TypeError(f"llama_cpp.Llama does not take {', '.join(unknown)}; its options are: "
                        f"{', '.join(k for k in accepted if k not in ('self', 'model_path', 'kwargs'))}.")


def load_error(llama_cpp: Any, exc: ValueError, model_path: str | None, options: Mapping[str, Any], *,
               context_started: bool) -> ModelLoadError:
    """The ``ModelLoadError`` for a ``ValueError`` from ``Llama()``: the weights or the context, and what to do."""
    version = getattr(llama_cpp, "__version__", "?")
    if context_started:
        return ModelLoadError(
            f"llama.cpp loaded {model_path!r} but could not create a context of n_ctx="
            f"{options.get('n_ctx')}: {exc}. Lower n_ctx (or n_batch), or free memory; pass verbose=True "
            "to see llama.cpp's log.")
    return ModelLoadError(
        f"llama.cpp could not load {model_path!r}, a complete GGUF file: {exc}. Its architecture or "
        f"quantization may be newer than this llama-cpp-python ({version}): upgrade it with "
        "pip install --upgrade llama-cpp-python, or pass verbose=True to see llama.cpp's log.")


def load_attributes(llama_cpp: Any, llm: Any, started_ns: int, started: float, marks: list[int]) -> dict[str, Any]:
    """The model-load span's attributes; the load time runs until llama-cpp-python starts the context."""
    model = llm._model
    attributes: dict[str, Any] = {
        names.MODEL_PARAMETERS: int(model.n_params()),
        names.MODEL_VOCAB_SIZE: int(llm.n_vocab()),
        names.MODEL_TRAINED_CONTEXT: int(model.n_ctx_train()),
        names.MODEL_LOAD_DURATION: (marks[0] - started_ns) / 1e9 if marks else time.perf_counter() - started,
    }
    use_mmap = _uses_mmap(llama_cpp, llm.model_params)
    if use_mmap is not None:
        attributes[names.MODEL_MMAP] = use_mmap
    file_type = _file_type(llama_cpp, model)
    if file_type is not None:
        attributes[names.MODEL_FILE_TYPE] = file_type
    return attributes


def _file_type(llama_cpp: Any, model: Any) -> str | None:
    """The loaded model's GGUF file type as llama.cpp names it (``Q4_K_M``), from its ``LLAMA_FTYPE_*`` constants."""
    ftype = getattr(llama_cpp, "llama_model_ftype", None)
    if ftype is None:  # older llama-cpp-python
        return None
    value = int(ftype(model.model))
    for attr in dir(llama_cpp):
        if attr.startswith(("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")) and getattr(llama_cpp, attr) == value:
            return attr.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    return None


def context_span(tracer: Any, llama_cpp: Any, llm: Any, n_ctx: int, start_ns: int, end_ns: int, *, parent: Any,
                 error: BaseException | None = None) -> None:
    """The ``llama_cpp.context.create`` child of the load span, from the times the loading thread marked."""
    from opentelemetry import trace

    from llamatelemetry.decorators import record_error

    span = tracer.start_span(names.SPAN_CONTEXT_CREATE, context=trace.set_span_in_context(parent),
                             start_time=start_ns, attributes={names.CONTEXT_SIZE: n_ctx})
    if error is not None:
        record_error(span, error)
    elif llm is not None:
        attributes: dict[str, Any] = {names.CONTEXT_BATCH_SIZE: int(llama_cpp.llama_n_batch(llm.ctx))}
        flash = _flash_attention(llama_cpp, llm.context_params)
        if flash is not None:
            attributes[names.CONTEXT_FLASH_ATTENTION] = flash
        kv_bytes = kv_cache_bytes(llama_cpp, llm, n_ctx)
        if kv_bytes is not None:
            attributes[names.KV_CACHE_SIZE] = kv_bytes
        span.set_attributes(attributes)
    span.end(end_time=end_ns)
