"""``LlamaCppBackend``: llama.cpp in this process (llama-cpp-python), traced from model load to last token.

``start()`` checks the file (exists, GGUF magic, not truncated) and loads the model inside a
``llama_cpp.model.load`` span with a ``llama_cpp.context.create`` child. Each ``generate()`` runs
inside the engine's request span and adds a ``llama_cpp.prefill`` span (the prompt, in ``n_batch``
chunks) and a ``llama_cpp.decode`` span (the token loop), times every ``llama_decode`` call into
histograms, and reports llama.cpp's own perf counters beside its own clock, never instead of it.

llama-cpp-python is imported only by ``start()``; without it, the error is the install command.

This module holds the backend class; what it runs lives beside it, one concern per module:
``gguf_file`` (the GGUF header check), ``model_load`` (llama-cpp-python's import, the load and
context spans), ``chat_prompt`` (chat templates to prompt tokens), ``prefill_decode`` (the prefill
and decode spans, the token loop, the per-call histograms) and ``kv_and_perf`` (KV-cache and
llama.cpp perf-counter figures). ``GGUFFileInfo`` and ``check_gguf_file`` stay importable from here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from llamatelemetry.errors import BackendNotStartedError, ValidationError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams
from llamatelemetry.otel import get_tracer
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.mapping import model_display_name
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.backend_errors import ContextOverflowError, ModelFileNotFoundError
from llamatelemetry_llamacpp.chat_prompt import prompt_tokens, resolve_chat_handler
from llamatelemetry_llamacpp.gguf_file import GGUFFileInfo, check_gguf_file
from llamatelemetry_llamacpp.kv_and_perf import request_figures, reset_perf_counters
from llamatelemetry_llamacpp.model_load import (
    check_options,
    construct_llama,
    context_span,
    import_llama_cpp,
    load_attributes,
    load_error,
)
from llamatelemetry_llamacpp.prefill_decode import decode, plugin_instruments, prefill, record_decode_calls

__all__ = ["LlamaCppBackend", "GGUFFileInfo", "check_gguf_file", "DEFAULT_N_CTX"]

#: Context size when neither ``n_ctx`` nor a ``CudaInferenceConfig`` gives one (CudaInferenceConfig's default).
DEFAULT_N_CTX: Final = 4096


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
                llama_cpp = import_llama_cpp()
                check_options(llama_cpp, self._options)
                try:
                    llm = construct_llama(llama_cpp, self.model_path, self._options, marks)
                except ValueError as exc:
                    raise load_error(llama_cpp, exc, self.model_path, self._options,
                                     context_started=bool(marks)) from exc
                ended_ns = time.time_ns()
                n_ctx = int(llm.n_ctx())
                chat_handler = resolve_chat_handler(llama_cpp, llm)
                self._install_decode_timer(llm)
                if load_span.is_recording():
                    load_span.set_attributes(load_attributes(llama_cpp, llm, started_ns, started, marks))
                    context_span(tracer, llama_cpp, llm, n_ctx, marks[0] if marks else ended_ns,
                                 marks[1] if len(marks) > 1 else ended_ns, parent=load_span)
            except BaseException as exc:
                failed_ns = time.time_ns()
                if len(marks) == 1:  # the weights loaded; creating the context failed
                    context_span(tracer, None, None, int(self._options.get("n_ctx") or 0), marks[0], failed_ns,
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
                plugin_instruments().model_load_duration.record(load_seconds, self._metric_attributes())

    def _metric_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {gen_ai.GEN_AI_PROVIDER_NAME: self.provider_name}
        if self.model_name:
            attributes[gen_ai.GEN_AI_REQUEST_MODEL] = self.model_name
        return attributes

    def _install_decode_timer(self, llm: Any) -> None:
        # Every llama_decode of Llama.eval goes through LlamaContext.decode: timing it there gives one
        # figure per call (prompt chunks and single tokens alike) at the cost of two clock reads.
        context = llm._ctx
        llama_decode = context.decode
        clock = time.perf_counter

        def timed_decode(batch: Any) -> Any:
            record = self._decode_log
            if record is None:
                return llama_decode(batch)
            began = clock()
            result = llama_decode(batch)
            record.append((clock() - began, int(batch.batch.n_tokens)))
            return result

        context.decode = timed_decode

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
        llama_cpp, llm = self._llama_cpp, self._llm
        prompt, stops = prompt_tokens(llm, self._chat_handler, self.model_name, request)
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
        ctx = llm.ctx
        perf_enabled = reset_perf_counters(llama_cpp, llm, ctx)
        tracer = get_tracer()
        decode_log: list[tuple[float, int]] = []
        self._decode_log = decode_log
        sampler = self._sampler(request.sampling)
        try:
            prefilled = prefill(tracer, llm, prompt, reused, decode_log)
            decoded = decode(tracer, llama_cpp, llm, ctx, sampler, stops, max_new, decode_log, prefilled.calls)
        finally:
            self._decode_log = None
            sampler.close()

        attributes = self._after_request(llama_cpp, ctx, perf_enabled, decode_log, prefilled.calls)
        n_out = decoded.output_tokens
        total = decoded.ended - started
        return InferenceResult(
            text=decoded.text.decode("utf-8", errors="ignore"),
            ttft_ms=(decoded.first_at - started) * 1e3,
            tps=n_out / total if total > 0 else None,
            vram_peak_mb=None,
            prefill_tps=prefilled.tokens_per_second,
            input_tokens=n_prompt,
            output_tokens=n_out,
            cached_input_tokens=reused,
            decode_tps=decoded.tokens_per_second,
            total_ms=total * 1e3,
            finish_reason=decoded.finish_reason,
            model=self.model_name,
            request_id=request.request_id,
            attributes=attributes,
        )

    def _after_request(self, llama_cpp: Any, ctx: Any, perf_enabled: bool,
                       decode_log: list[tuple[float, int]], prefill_calls: int) -> dict[str, Any]:
        """KV cache use and llama.cpp's perf counters for the request span; per-call metrics when telemetry is on."""
        attributes = request_figures(llama_cpp, self._llm, ctx, self._n_ctx, perf_enabled)
        if telemetry_active():
            instruments = plugin_instruments()
            base = self._metric_attributes()
            instruments.kv_cache_usage.set(attributes[names.KV_CACHE_USAGE], base)
            if self.decode_call_metrics:
                record_decode_calls(instruments, self.model_name, decode_log, prefill_calls)
        return attributes
