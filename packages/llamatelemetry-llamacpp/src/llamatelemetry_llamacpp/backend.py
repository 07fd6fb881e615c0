"""``LlamaCppBackend``: llama.cpp in this process (llama-cpp-python), traced from model load to last token.

``start()`` checks the file (exists, GGUF magic, not truncated) and loads the model inside a
``llama_cpp.model.load`` span with a ``llama_cpp.context.create`` child. Each ``generate()`` runs
inside the engine's request span and adds a ``llama_cpp.prefill`` span (the prompt, in ``n_batch``
chunks) and a ``llama_cpp.decode`` span (the token loop), times every ``llama_decode`` call into
histograms, and reports llama.cpp's own perf counters beside its own clock, never instead of it.

llama-cpp-python is imported only by ``start()``; without it, the error is the install command.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from llamatelemetry.errors import BackendNotStartedError, ValidationError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams
from llamatelemetry.otel import get_tracer
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.mapping import model_display_name
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.backend_errors import (
    ChatTemplateError,
    ContextOverflowError,
    LlamaCppNotInstalledError,
    ModelFileNotFoundError,
    ModelLoadError,
    NotAGGUFError,
    TruncatedModelError,
)

__all__ = ["LlamaCppBackend", "GGUFFileInfo", "check_gguf_file", "DEFAULT_N_CTX"]

log = logging.getLogger("llamatelemetry.llamacpp")

#: Context size when neither ``n_ctx`` nor a ``CudaInferenceConfig`` gives one (CudaInferenceConfig's default).
DEFAULT_N_CTX: Final = 4096


# ------------------------------------------------------------------ the GGUF file, checked before llama.cpp sees it

_GGUF_MAGIC: Final = b"GGUF"
_DEFAULT_ALIGNMENT: Final = 32
# GGUF metadata value types -> byte size (string = 8, array = 9 are variable).
_SCALAR_SIZES: Final[Mapping[int, int]] = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# ggml tensor type -> (elements per block, bytes per block), as gguf.GGML_QUANT_SIZES. Only stable
# layouts are listed; a tensor of a type not here is not size-checked (llama.cpp checks it on load).
_GGML_TYPE_SIZES: Final[Mapping[int, tuple[int, int]]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}  # fmt: skip


@attrs.frozen
class GGUFFileInfo:
    """What the header of a complete GGUF file says about it."""

    path: str
    file_size: int
    version: int
    n_tensors: int
    n_metadata: int
    #: Bytes the header's tensor table needs (data offset + the end of the last tensor whose type is known).
    needed_size: int


class _ShortRead(Exception):
    """The header runs past the end of the file."""


class _HeaderReader:
    """Little-endian reads over the mapped file, each bounds-checked."""

    def __init__(self, data: mmap.mmap | bytes, size: int) -> None:
        self.data = data
        self.size = size
        self.pos = 0

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _ShortRead
        self.pos = start + n
        return start

    def u32(self) -> int:
        value: int = struct.unpack_from("<I", self.data, self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack_from("<Q", self.data, self.take(8))[0]
        return value

    def string(self) -> bytes:
        length = self.u64()
        start = self.take(length)
        return bytes(self.data[start:start + length])

    def skip_value(self, kind: int) -> None:
        if kind in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[kind])
        elif kind == _STRING:
            self.take(self.u64())
        elif kind == _ARRAY:
            item_kind, count = self.u32(), self.u64()
            if item_kind in _SCALAR_SIZES:
                self.take(_SCALAR_SIZES[item_kind] * count)
            else:
                if count > self.size - self.pos:  # every item takes at least one byte
                    raise _ShortRead
                for _ in range(count):
                    self.skip_value(item_kind)
        else:
            raise ValueError(f"unknown metadata value type {kind}")


def check_gguf_file(path: str | os.PathLike[str]) -> GGUFFileInfo:
    """Check that ``path`` is a complete GGUF file, reading only its header; raise a specific error if not."""
    text = os.fspath(path)
    if not os.path.isfile(text):
        raise ModelFileNotFoundError(text)
    with open(text, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise NotAGGUFError(text, b"", "the file is empty (0 bytes)")
        head = handle.read(4)
        if head != _GGUF_MAGIC:
            if len(head) < 4 and _GGUF_MAGIC.startswith(head):
                raise TruncatedModelError(text, size, None, "it ends inside the GGUF magic")
            raise NotAGGUFError(text, head)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_header(text, data, size)


def _parse_header(path: str, data: mmap.mmap, size: int) -> GGUFFileInfo:
    reader = _HeaderReader(data, size)
    reader.take(4)
    where = "it ends inside the GGUF header"
    try:
        version = reader.u32()
        if version not in (2, 3):
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            reason = (f"it is a big-endian GGUF (version {swapped}), which this machine's llama.cpp cannot load"
                      if swapped in (2, 3) else f"its GGUF version is {version}; llama.cpp loads versions 2 and 3")
            raise NotAGGUFError(path, bytes(data[:8]), reason)
        n_tensors, n_kv = reader.u64(), reader.u64()
        alignment = _DEFAULT_ALIGNMENT
        where = "it ends inside the GGUF metadata"
        for _ in range(n_kv):
            key = reader.string()
            kind = reader.u32()
            if key == b"general.alignment" and kind == _UINT32:
                alignment = reader.u32() or _DEFAULT_ALIGNMENT
            else:
                reader.skip_value(kind)
        where = "it ends inside the GGUF tensor table"
        if n_tensors > size - reader.pos:
            raise _ShortRead
        data_end = 0
        for _ in range(n_tensors):
            reader.take(reader.u64())  # the tensor's name
            n_dims = reader.u32()
            elements = 1
            for _ in range(n_dims):
                elements *= reader.u64()
            tensor_type, offset = reader.u32(), reader.u64()
            block = _GGML_TYPE_SIZES.get(tensor_type)
            if block is not None and elements % block[0] == 0:
                data_end = max(data_end, offset + elements // block[0] * block[1])
    except _ShortRead:
        raise TruncatedModelError(path, size, None, where) from None
    except ValueError as exc:  # an unknown metadata type: a damaged header, or a newer format
        raise NotAGGUFError(path, bytes(data[:8]), f"its header is damaged or newer than this check ({exc})") from None
    data_start = -(-reader.pos // alignment) * alignment
    needed = data_start + data_end if n_tensors else reader.pos
    if size < needed:
        raise TruncatedModelError(path, size, needed, "the tensor data stops short of what the header lists")
    return GGUFFileInfo(path=path, file_size=size, version=version, n_tensors=n_tensors, n_metadata=n_kv,
                        needed_size=needed)


# ------------------------------------------------------------------ llama-cpp-python, imported lazily

def _import_llama_cpp() -> Any:
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


def _construct_llama(llama_cpp: Any, path: str, options: Mapping[str, Any], marks: list[int]) -> Any:
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


def _kv_cache_bytes(llama_cpp: Any, llm: Any, n_ctx: int) -> int | None:
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
        k_block = _GGML_TYPE_SIZES.get(int(params.type_k))
        v_block = _GGML_TYPE_SIZES.get(int(params.type_v))
        if k_block is None or v_block is None:
            return None
        k_row = n_head_kv * key_length * k_block[1] // k_block[0]
        v_row = n_head_kv * value_length * v_block[1] // v_block[0]
        return n_layer * n_ctx * (k_row + v_row)
    except (AttributeError, TypeError, ValueError):  # per-layer arrays in metadata, an older binding
        log.debug("KV cache size not computable for this model", exc_info=True)
        return None


# ------------------------------------------------------------------ per-call metrics

@attrs.frozen
class _Instruments:
    """The plugin's own instruments on one meter."""

    meter: Any
    decode_duration: Any
    decode_batch_size: Any
    kv_cache_usage: Any
    model_load_duration: Any


def _plugin_instruments() -> _Instruments:
    """The decode-call histograms, the KV gauge and the load histogram on the current meter (made once per meter)."""
    from llamatelemetry.otel import cached_instruments

    return cached_instruments("llamatelemetry_llamacpp", _create_instruments)


def _create_instruments(meter: Any) -> _Instruments:
    from llamatelemetry.semconv.metrics import DURATION_BUCKETS, SERVER_TTFT_BUCKETS, TOKEN_USAGE_BUCKETS

    # Single-token decode calls take well under 10 ms: add the finer TTFT boundaries at the low end.
    fine = sorted({*SERVER_TTFT_BUCKETS, *DURATION_BUCKETS})
    return _Instruments(
        meter=meter,
        decode_duration=meter.create_histogram(
            names.METRIC_DECODE_DURATION, unit="s", description="Duration of one llama_decode call.",
            explicit_bucket_boundaries_advisory=fine),
        decode_batch_size=meter.create_histogram(
            names.METRIC_DECODE_BATCH_SIZE, unit="{token}", description="Tokens in one llama_decode call.",
            explicit_bucket_boundaries_advisory=list(TOKEN_USAGE_BUCKETS)),
        kv_cache_usage=meter.create_gauge(
            names.METRIC_KV_CACHE_USAGE, unit="1",
            description="Share of the context the KV cache holds after a request, 0 to 1."),
        model_load_duration=meter.create_histogram(
            names.METRIC_MODEL_LOAD_DURATION, unit="s", description="Time llama.cpp took to load a model's weights.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS)),
    )


# ------------------------------------------------------------------ chat templates

class _PromptCaptured(Exception):
    """Raised by the capture proxy to carry the prompt a chat handler built, before any generation."""

    def __init__(self, prompt: Any, stop: Any) -> None:
        super().__init__("prompt captured")
        self.prompt = prompt
        self.stop = stop


class _PromptCapture:
    """Stands in for the Llama during a chat handler call: the handler formats and tokenizes, we keep the prompt."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any = None, **kwargs: Any) -> Any:
        raise _PromptCaptured(prompt, kwargs.get("stop"))


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str) and s]


# ------------------------------------------------------------------ the backend

class LlamaCppBackend:
    """llama.cpp in this process through llama-cpp-python, as an ``LLMBackend`` with load/prefill/decode spans.

    ``config`` maps a ``CudaInferenceConfig`` to llama.cpp (``gpu_layers`` -> ``n_gpu_layers``,
    ``ctx_size`` -> ``n_ctx``, ``batch_size`` -> ``n_batch``, ``flash_attn``, ``tensor_split`` when it
    splits over several GPUs); ``n_ctx``, ``n_threads`` and ``seed`` override it, and other keyword
    arguments go to ``llama_cpp.Llama`` as they are. With ``cache_prompt`` (the default, as in
    llama.cpp's server) a prompt that starts like the previous request's reuses its KV cache, and
    the reused tokens are reported as ``gen_ai.usage.cache_read.input_tokens``.
    ``decode_call_metrics`` records every ``llama_decode`` call's duration and batch size (two
    histogram points per generated token, about 8 us with the OpenTelemetry SDK: negligible for
    real models, noticeable only for toy models that decode a token in well under a millisecond).

    Example::

        engine = InferenceEngine(LlamaCppBackend("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048))
        with engine:
            engine.generate(InferenceRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=16))
    """

    provider_name: Final = gen_ai.PROVIDER_LLAMA_CPP
    span_kind: Final = "internal"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        config: CudaInferenceConfig | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        seed: int | None = None,
        verbose: bool = False,
        cache_prompt: bool = True,
        decode_call_metrics: bool = True,
        **llama_kwargs: Any,
    ) -> None:
        if "llama_server_url" in llama_kwargs:
            raise TypeError("LlamaCppBackend runs llama.cpp in this process and takes model_path=; for a running "
                            "server use LlamaCppServerBackend, or create_engine('llama.cpp', llama_server_url=...).")
        if "model_path" in llama_kwargs:
            raise TypeError("LlamaCppBackend got model_path twice.")
        if config is not None and not isinstance(config, CudaInferenceConfig):
            raise TypeError(f"config must be a CudaInferenceConfig, not {type(config).__name__}.")
        self.model_path: str | None = None if model_path is None else os.fspath(model_path)
        self.model_name: str | None = model_display_name(self.model_path)
        self.config = config
        self.cache_prompt = cache_prompt
        self.decode_call_metrics = decode_call_metrics
        self._options = self._llama_options(config, n_ctx, n_threads, seed, verbose, llama_kwargs)
        self._seed = seed
        self._llm: Any = None
        self._llama_cpp: Any = None
        self._chat_handler: Any = None
        self._n_ctx = 0
        self._lock = threading.RLock()
        # Where the timed llama_decode wrapper appends (seconds, tokens) while a request runs.
        self._decode_log: list[tuple[float, int]] | None = None
        self.gguf: GGUFFileInfo | None = None

    @staticmethod
    def _llama_options(config: CudaInferenceConfig | None, n_ctx: int | None, n_threads: int | None,
                       seed: int | None, verbose: bool, extra: Mapping[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if config is not None:
            options.update(n_gpu_layers=config.gpu_layers, n_ctx=config.ctx_size, n_batch=config.batch_size,
                           flash_attn=config.flash_attn)
            if config.n_gpus > 1:
                options["tensor_split"] = list(config.tensor_split_values)
        options["n_ctx"] = n_ctx if n_ctx is not None else options.get("n_ctx", DEFAULT_N_CTX)
        if n_threads is not None:
            # One thread count for prompt batches too: llama-cpp-python otherwise takes every core for them.
            options.update(n_threads=n_threads, n_threads_batch=n_threads)
        if seed is not None:
            options["seed"] = seed
        options["verbose"] = verbose
        options.update(extra)
        return options

    # -------------------------------------------------------------- lifecycle

    @property
    def started(self) -> bool:
        """Whether the model is loaded."""
        return self._llm is not None

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (after ``start()``), for what this backend does not wrap."""
        if self._llm is None:
            raise BackendNotStartedError("LlamaCppBackend is not started: call start() first.")
        return self._llm

    @property
    def n_ctx(self) -> int:
        """The context window llama.cpp allocated (it may round the requested size up); 0 before start()."""
        return self._n_ctx

    def start(self) -> None:
        """Check the GGUF file and load it, recorded as ``llama_cpp.model.load`` and ``llama_cpp.context.create``."""
        with self._lock:
            if self._llm is not None:
                return
            from llamatelemetry.decorators import record_error

            tracer = get_tracer()
            started_ns, started = time.time_ns(), time.perf_counter()
            load_span = tracer.start_span(names.SPAN_MODEL_LOAD, start_time=started_ns, attributes={
                gen_ai.GEN_AI_PROVIDER_NAME: self.provider_name,
                **({gen_ai.GEN_AI_REQUEST_MODEL: self.model_name} if self.model_name else {}),
                **({names.MODEL_PATH: self.model_path} if self.model_path else {}),
            })
            marks: list[int] = []
            llm: Any = None
            try:
                if self.model_path is None:
                    raise ModelFileNotFoundError(None)
                self.gguf = check_gguf_file(self.model_path)
                load_span.set_attribute(names.MODEL_FILE_SIZE, self.gguf.file_size)
                llama_cpp = _import_llama_cpp()
                self._check_options(llama_cpp)
                try:
                    llm = _construct_llama(llama_cpp, self.model_path, self._options, marks)
                except ValueError as exc:
                    raise self._load_error(llama_cpp, exc, context_started=bool(marks)) from exc
                ended_ns = time.time_ns()
                n_ctx = int(llm.n_ctx())
                chat_handler = self._resolve_chat_handler(llama_cpp, llm)
                self._install_decode_timer(llm)
                if load_span.is_recording():
                    load_span.set_attributes(self._load_attributes(llama_cpp, llm, started_ns, started, marks))
                    self._context_span(tracer, llama_cpp, llm, n_ctx, marks[0] if marks else ended_ns,
                                       marks[1] if len(marks) > 1 else ended_ns, parent=load_span)
            except BaseException as exc:
                failed_ns = time.time_ns()
                if len(marks) == 1:  # the weights loaded; creating the context failed
                    self._context_span(tracer, None, None, int(self._options.get("n_ctx") or 0), marks[0], failed_ns,
                                       parent=load_span, error=exc)
                record_error(load_span, exc)
                load_span.end(end_time=failed_ns)
                if llm is not None:
                    llm.close()
                raise
            load_span.end(end_time=ended_ns)
            self._llm, self._llama_cpp, self._n_ctx, self._chat_handler = llm, llama_cpp, n_ctx, chat_handler
            if telemetry_active():
                load_seconds = (marks[0] - started_ns) / 1e9 if marks else (ended_ns - started_ns) / 1e9
                _plugin_instruments().model_load_duration.record(load_seconds, self._metric_attributes())

    @staticmethod
    def _load_attributes(llama_cpp: Any, llm: Any, started_ns: int, started: float,
                         marks: list[int]) -> dict[str, Any]:
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
        return attributes

    def _metric_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {gen_ai.GEN_AI_PROVIDER_NAME: self.provider_name}
        if self.model_name:
            attributes[gen_ai.GEN_AI_REQUEST_MODEL] = self.model_name
        return attributes

    def _check_options(self, llama_cpp: Any) -> None:
        # Llama() swallows unknown keyword arguments; a typo would silently do nothing.
        accepted = inspect.signature(llama_cpp.Llama.__init__).parameters
        unknown = sorted(k for k in self._options if k not in accepted)
        if unknown:
            raise TypeError(f"llama_cpp.Llama does not take {', '.join(unknown)}; its options are: "
                            f"{', '.join(k for k in accepted if k not in ('self', 'model_path', 'kwargs'))}.")

    def _load_error(self, llama_cpp: Any, exc: ValueError, *, context_started: bool) -> ModelLoadError:
        version = getattr(llama_cpp, "__version__", "?")
        if context_started:
            return ModelLoadError(
                f"llama.cpp loaded {self.model_path!r} but could not create a context of n_ctx="
                f"{self._options.get('n_ctx')}: {exc}. Lower n_ctx (or n_batch), or free memory; pass verbose=True "
                "to see llama.cpp's log.")
        return ModelLoadError(
            f"llama.cpp could not load {self.model_path!r}, a complete GGUF file: {exc}. Its architecture or "
            f"quantization may be newer than this llama-cpp-python ({version}): upgrade it with "
            "pip install --upgrade llama-cpp-python, or pass verbose=True to see llama.cpp's log.")

    @staticmethod
    def _context_span(tracer: Any, llama_cpp: Any, llm: Any, n_ctx: int, start_ns: int, end_ns: int, *, parent: Any,
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
            kv_bytes = _kv_cache_bytes(llama_cpp, llm, n_ctx)
            if kv_bytes is not None:
                attributes[names.KV_CACHE_SIZE] = kv_bytes
            span.set_attributes(attributes)
        span.end(end_time=end_ns)

    def _install_decode_timer(self, llm: Any) -> None:
        # Every llama_decode of Llama.eval goes through LlamaContext.decode: timing it there gives one
        # figure per call (prompt chunks and single tokens alike) at the cost of two clock reads.
        context = llm._ctx
        decode = context.decode
        clock = time.perf_counter

        def timed_decode(batch: Any) -> Any:
            record = self._decode_log
            if record is None:
                return decode(batch)
            began = clock()
            result = decode(batch)
            record.append((clock() - began, int(batch.batch.n_tokens)))
            return result

        context.decode = timed_decode

    @staticmethod
    def _resolve_chat_handler(llama_cpp: Any, llm: Any) -> Any:
        # The handler create_chat_completion would use: the model's own template, or the chat_format given.
        handler = llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
        if handler is None and llm.chat_format is not None:
            handler = llama_cpp.llama_chat_format.get_chat_completion_handler(llm.chat_format)
        return handler

    def shutdown(self) -> None:
        """Free the model and its context; calling it twice is harmless."""
        with self._lock:
            llm, self._llm = self._llm, None
            self._chat_handler, self._n_ctx = None, 0
            if llm is not None:
                llm.close()

    # -------------------------------------------------------------- generation

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request`` on the loaded model: template, tokenize, prefill, decode; exact counts and real times."""
        started = time.perf_counter()
        with self._lock:
            if self._llm is None:
                raise BackendNotStartedError("LlamaCppBackend is not started: call start() (or use an "
                                             "InferenceEngine in a with-block) before generate().")
            return self._generate(request, started)

    def _prompt(self, request: InferenceRequest) -> tuple[list[int], list[str]]:
        llm = self._llm
        stops = list(request.sampling.stop)
        if request.operation == "text_completion":
            return llm.tokenize(request.prompt_text.encode("utf-8"), add_bos=True, special=True), stops
        if self._chat_handler is None:
            raise ChatTemplateError("The model has no chat template and no chat_format was given: pass "
                                    "chat_format='chatml' (or the model's format) to LlamaCppBackend, or send "
                                    "the request with operation='text_completion'.")
        try:
            self._chat_handler(llama=_PromptCapture(llm), messages=request.messages, stop=stops, max_tokens=1,
                               stream=False)
        except _PromptCaptured as captured:
            prompt, stops = captured.prompt, _stop_list(captured.stop)
        except Exception as exc:
            raise ChatTemplateError(f"The chat template of {self.model_name!r} (chat_format="
                                    f"{llm.chat_format!r}) rejected the messages: {type(exc).__name__}: {exc}. Fix "
                                    "the messages (some templates need alternating user/assistant roles or no system "
                                    "message), pass chat_format= or chat_handler= to LlamaCppBackend, or send the "
                                    "request with operation='text_completion'.") from exc
        else:
            raise ChatTemplateError(f"The chat handler of {self.model_name!r} (chat_format={llm.chat_format!r}) "
                                    "does not build a text prompt, so this backend cannot run it: use a text chat "
                                    "format or operation='text_completion'.")
        if isinstance(prompt, str):
            return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True), stops
        return [int(t) for t in prompt], stops

    def _reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keep the KV cache of the longest prefix shared with what it holds; return how many tokens that is."""
        llm = self._llm
        held = int(llm.n_tokens)
        if self.cache_prompt and held and not (llm._is_recurrent or llm._is_hybrid):
            common = 0
            for cached, wanted in zip(llm.input_ids[:held].tolist(), prompt, strict=False):
                if cached != wanted:
                    break
                common += 1
            # At least the last prompt token is evaluated again: its logits give the first new token.
            reuse = min(common, len(prompt) - 1)
            if reuse > 0 and llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
                llm.n_tokens = reuse
                return reuse
        llm.reset()
        return 0

    def _sampler(self, sampling: SamplingParams) -> Any:
        llm = self._llm
        seed = sampling.seed if sampling.seed is not None else self._seed
        # No seed: llama.cpp's default seed, which means a random one.
        llm.set_seed(seed if seed is not None else int(self._llama_cpp.LLAMA_DEFAULT_SEED))
        # llama-cpp-python's own chain (penalties, then greedy or top-k/top-p/temperature/dist), so a
        # request samples as Llama.create_completion would; min_p and typical_p are left out (not asked).
        return llm._init_sampler(
            top_k=sampling.top_k, top_p=sampling.top_p, min_p=0.0, typical_p=1.0, temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty, frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
        )

    def _generate(self, request: InferenceRequest, started: float) -> InferenceResult:
        from llamatelemetry.decorators import record_error

        llama_cpp, llm = self._llama_cpp, self._llm
        prompt, stops = self._prompt(request)
        if not prompt:
            # Empty text and no BOS added: start from BOS, as Llama.create_completion does.
            bos = int(llm.token_bos())
            if bos < 0:
                raise ValidationError("InferenceRequest", "messages", "<empty text>",
                                      "text that gives at least one token (this model has no BOS token)")
            prompt = [bos]
        n_prompt, n_ctx = len(prompt), self._n_ctx
        if n_prompt >= n_ctx:
            raise ContextOverflowError(n_prompt, n_ctx)
        max_new = min(request.max_tokens, n_ctx - n_prompt)
        reused = self._reuse_prefix(prompt)
        ctx, vocab = llm.ctx, llm._model.vocab
        perf_enabled = not bool(getattr(llm.context_params, "no_perf", False))
        if perf_enabled:
            llama_cpp.llama_perf_context_reset(ctx)
        tracer = get_tracer()
        decode_log: list[tuple[float, int]] = []
        self._decode_log = decode_log
        sampler = self._sampler(request.sampling)
        try:
            # ---- prefill: the prompt tokens the cache does not hold, in n_batch chunks
            prefill_span = tracer.start_span(names.SPAN_PREFILL)
            prefill_start = time.perf_counter()
            try:
                llm.eval(prompt[reused:])
            except BaseException as exc:
                record_error(prefill_span, exc)
                prefill_span.end()
                raise
            prefill_seconds = time.perf_counter() - prefill_start
            n_evaluated = n_prompt - reused
            prefill_calls = len(decode_log)
            prefill_tps = n_evaluated / prefill_seconds if prefill_seconds > 0 else None
            if prefill_span.is_recording():
                prefill_span.set_attributes({names.PHASE_TOKENS: n_evaluated, names.DECODE_CALLS: prefill_calls,
                                             gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: reused,
                                             **({names.PHASE_TOKENS_PER_SECOND: prefill_tps} if prefill_tps else {})})
            prefill_span.end()

            # ---- decode: sample, stop on end-of-generation / stop string / limit, else evaluate the token
            decode_span = tracer.start_span(names.SPAN_DECODE)
            output: list[int] = []
            text = bytearray()
            finish = gen_ai.FINISH_REASON_LENGTH
            first_at = last_at = 0.0
            stop_bytes = [s.encode("utf-8") for s in stops]
            longest_stop = max((len(s) for s in stop_bytes), default=0)
            piece = _PieceReader(llama_cpp, vocab)
            sample, is_eog, sampler_ptr = llama_cpp.llama_sampler_sample, llama_cpp.llama_vocab_is_eog, sampler.sampler
            clock = time.perf_counter
            try:
                while True:
                    token = sample(sampler_ptr, ctx, -1)
                    last_at = clock()
                    if not first_at:
                        first_at = last_at
                    if is_eog(vocab, token):
                        finish = gen_ai.FINISH_REASON_STOP
                        break
                    output.append(token)
                    chunk = piece(token)
                    text += chunk
                    if longest_stop:
                        # Only a stop string that ends in the new bytes can be new.
                        window = max(0, len(text) - len(chunk) - longest_stop + 1)
                        found = [i for i in (text.find(s, window) for s in stop_bytes) if i >= 0]
                        if found:
                            del text[min(found):]
                            finish = gen_ai.FINISH_REASON_STOP
                            break
                    if len(output) >= max_new:
                        break
                    llm.eval((token,))
            except BaseException as exc:
                record_error(decode_span, exc)
                decode_span.end()
                raise
            ended = clock()
            n_out = len(output)
            decode_tps = (n_out - 1) / (last_at - first_at) if n_out > 1 and last_at > first_at else None
            if decode_span.is_recording():
                decode_span.set_attributes({
                    names.PHASE_TOKENS: n_out, names.DECODE_CALLS: len(decode_log) - prefill_calls,
                    **({names.PHASE_TOKENS_PER_SECOND: decode_tps} if decode_tps else {})})
            decode_span.end()
        finally:
            self._decode_log = None
            sampler.close()

        attributes = self._after_request(llama_cpp, ctx, perf_enabled, decode_log, prefill_calls)
        total = ended - started
        return InferenceResult(
            text=bytes(text).decode("utf-8", errors="ignore"),
            ttft_ms=(first_at - started) * 1e3,
            tps=n_out / total if total > 0 else None,
            vram_peak_mb=None,
            prefill_tps=prefill_tps,
            input_tokens=n_prompt,
            output_tokens=n_out,
            cached_input_tokens=reused,
            decode_tps=decode_tps,
            total_ms=total * 1e3,
            finish_reason=finish,
            model=self.model_name,
            request_id=request.request_id,
            attributes=attributes,
        )

    def _after_request(self, llama_cpp: Any, ctx: Any, perf_enabled: bool,
                       decode_log: list[tuple[float, int]], prefill_calls: int) -> dict[str, Any]:
        """KV cache use and llama.cpp's perf counters for the request span; per-call metrics when telemetry is on."""
        llm = self._llm
        memory = llama_cpp.llama_get_memory(ctx)
        used = int(llama_cpp.llama_memory_seq_pos_max(memory, 0)) + 1 if memory is not None else int(llm.n_tokens)
        usage = used / self._n_ctx
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
        if telemetry_active():
            instruments = _plugin_instruments()
            base = self._metric_attributes()
            instruments.kv_cache_usage.set(usage, base)
            if self.decode_call_metrics:
                # The metric names say llama_cpp already; fewer attributes make each of these many records cheaper.
                model = {gen_ai.GEN_AI_REQUEST_MODEL: self.model_name} if self.model_name else {}
                prefill = {**model, names.PHASE: names.PHASE_PREFILL}
                decode = {**model, names.PHASE: names.PHASE_DECODE}
                duration, batch = instruments.decode_duration.record, instruments.decode_batch_size.record
                for index, (seconds, tokens) in enumerate(decode_log):
                    phase = prefill if index < prefill_calls else decode
                    duration(seconds, phase)
                    batch(tokens, phase)
        return attributes


class _PieceReader:
    """A token's text bytes through one reused buffer (``Llama.detokenize`` allocates one per call)."""

    def __init__(self, llama_cpp: Any, vocab: Any) -> None:
        import ctypes

        self._to_piece = llama_cpp.llama_token_to_piece
        self._vocab = vocab
        self._ctypes = ctypes
        self._size = 64
        self._buffer = ctypes.create_string_buffer(self._size)

    def __call__(self, token: int) -> bytes:
        n = int(self._to_piece(self._vocab, token, self._buffer, self._size, 0, False))
        if n < 0:  # the piece is longer than the buffer: llama.cpp says how long
            self._size = -n
            self._buffer = self._ctypes.create_string_buffer(self._size)
            n = int(self._to_piece(self._vocab, token, self._buffer, self._size, 0, False))
        return self._buffer.raw[:n]
