"""``TransformersBackend``: a Hugging Face causal LM in this process, traced from model load to last token.

``start()`` loads the model and tokenizer from a local folder (or takes objects the user already
has) inside a ``transformers.model.load`` span. Each ``generate()`` runs inside the engine's
request span: it builds the prompt with the tokenizer's chat template, generates with a
``TokenClock`` streamer (so time to first token is when the first new token existed, not a guess),
and adds ``transformers.prefill`` / ``transformers.decode`` child spans with those real times.
Token counts come from the ids. On CUDA, ``vram_peak_mb`` is the request's own peak.

torch and transformers are imported only by ``start()``; without them the error is the install command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from llamatelemetry.errors import BackendNotStartedError, ValidationError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams
from llamatelemetry.otel import get_tracer
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.mapping import model_display_name
from llamatelemetry_transformers import gpu
from llamatelemetry_transformers import semconv as names
from llamatelemetry_transformers._deps import device_name, dtype_name, import_torch, import_transformers
from llamatelemetry_transformers.errors import (
    ChatTemplateError,
    ContextOverflowError,
    ModelFolderNotFoundError,
    ModelLoadError,
)
from llamatelemetry_transformers.generation import TokenClock, count_outputs, eos_token_ids, phase_rates, record_phases

__all__ = ["TransformersBackend", "OpenAIPenalties"]

log = logging.getLogger("llamatelemetry.transformers")

_MIB: Final = 1024 * 1024
_DTYPES: Final = ("float32", "float16", "bfloat16", "float64")


class OpenAIPenalties:
    """A logits processor for OpenAI-style frequency and presence penalties over the generated tokens.

    transformers has neither: ``scores -= frequency * count + presence * (count > 0)``, where
    ``count`` is how often each token was generated so far in this request (the prompt excluded).
    """

    def __init__(self, frequency: float, presence: float, prompt_length: int) -> None:
        self.frequency = frequency
        self.presence = presence
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Apply the penalties to this step's ``scores`` (batch x vocabulary)."""
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0:
            return scores
        counts = scores.new_zeros(scores.shape).scatter_add_(1, generated, generated.new_ones(generated.shape)
                                                             .to(scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


@attrs.frozen
class _Loaded:
    """What ``start()`` loaded, replaced whole so ``generate`` never sees half of it."""

    torch: Any
    transformers: Any
    model: Any
    tokenizer: Any
    device: Any
    max_context: int | None
    eos_ids: frozenset[int]
    pad_id: int | None
    owns_model: bool


class TransformersBackend:
    """A transformers causal LM in this process, as an ``LLMBackend`` with load/prefill/decode spans.

    Give ``model_path`` (a folder written by ``save_pretrained``; Hub ids only with
    ``local_files_only=False``) or ``model`` and ``tokenizer`` objects you already loaded.
    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``; default CUDA when available, and the CPU when
    ``config.gpu_layers`` is 0) and ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"``,
    ``"auto"``) apply to a loaded model and, when given, to your objects too. ``max_context``
    (default ``config.ctx_size``, else the model's trained context) bounds prompt plus output.
    Other keyword arguments go to ``AutoModelForCausalLM.from_pretrained``.

    ``SamplingParams`` map to ``generate``: temperature 0 is greedy (``do_sample=False``), top-k 0
    and top-p 1 disable those filters, ``repeat_penalty`` is ``repetition_penalty``, frequency and
    presence penalties are applied by ``OpenAIPenalties``, ``stop`` becomes ``stop_strings``, and a
    seed makes sampling repeatable without touching the process's global random state.

    Example::

        engine = InferenceEngine(TransformersBackend("models/tiny-llama", device="cpu"))
        with engine:
            engine.generate(InferenceRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=16))
    """

    provider_name: Final = gen_ai.PROVIDER_TRANSFORMERS
    span_kind: Final = "internal"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        config: CudaInferenceConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        model_name: str | None = None,
        max_context: int | None = None,
        local_files_only: bool = True,
        chat_template: str | None = None,
        **load_kwargs: Any,
    ) -> None:
        if "llama_server_url" in load_kwargs:
            raise TypeError("TransformersBackend runs the model in this process and takes model_path= or model=; "
                            "llama_server_url= is for create_engine('llama.cpp', ...).")
        if config is not None and not isinstance(config, CudaInferenceConfig):
            raise TypeError(f"config must be a CudaInferenceConfig, not {type(config).__name__}.")
        if model_path is not None and model is not None:
            raise TypeError("TransformersBackend takes model_path= (load from a folder) or model= (an object you "
                            "loaded), not both.")
        if model is not None and tokenizer is None:
            raise TypeError("TransformersBackend(model=...) needs tokenizer= too: it turns messages into token ids "
                            "and ids back into text.")
        if model is not None and not callable(getattr(model, "generate", None)):
            raise TypeError(f"model= must be a transformers model with generate(), not {type(model).__name__}.")
        if dtype is not None and dtype != "auto" and not _is_torch_dtype(dtype) and dtype not in _DTYPES:
            raise ValidationError("TransformersBackend", "dtype", dtype, f"'auto', one of {', '.join(_DTYPES)}, "
                                  "or a torch.dtype")
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, int)
                                        or max_context < 2):
            raise ValidationError("TransformersBackend", "max_context", max_context, "an integer >= 2")
        self.model_path: str | None = None if model_path is None else os.fspath(model_path)
        self.config = config
        self.device = device
        self.dtype = dtype
        self.local_files_only = local_files_only
        self.chat_template = chat_template
        self._max_context = max_context
        self._load_kwargs = dict(load_kwargs)
        self._given_model = model
        self._given_tokenizer = tokenizer
        self.model_name: str | None = model_name or model_display_name(self.model_path) or (
            _object_model_name(model) if model is not None else None)
        self._loaded: _Loaded | None = None
        self._lock = threading.RLock()

    # -------------------------------------------------------------- lifecycle

    @property
    def started(self) -> bool:
        """Whether the model is loaded."""
        return self._loaded is not None

    @property
    def model(self) -> Any:
        """The transformers model (after ``start()``), for what this backend does not wrap."""
        return self._require().model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (after ``start()``)."""
        return self._require().tokenizer

    @property
    def max_context(self) -> int | None:
        """The prompt-plus-output limit in tokens (``None``: the model states none); known after ``start()``."""
        return self._loaded.max_context if self._loaded is not None else self._max_context

    def _require(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise BackendNotStartedError("TransformersBackend is not started: call start() (or use an "
                                         "InferenceEngine in a with-block) before generate().")
        return loaded

    def start(self) -> None:
        """Load (or adopt) the model and tokenizer, recorded as a ``transformers.model.load`` span."""
        with self._lock:
            if self._loaded is not None:
                return
            from llamatelemetry.decorators import record_error

            started_ns, started = time.time_ns(), time.perf_counter()
            span = get_tracer().start_span(names.SPAN_MODEL_LOAD, start_time=started_ns, attributes={
                gen_ai.GEN_AI_PROVIDER_NAME: self.provider_name,
                **({gen_ai.GEN_AI_REQUEST_MODEL: self.model_name} if self.model_name else {}),
                **({names.MODEL_PATH: self.model_path} if self.model_path else {}),
            })
            try:
                loaded = self._load()
                seconds = time.perf_counter() - started
                if span.is_recording():
                    span.set_attributes({**_model_attributes(loaded.model), names.MODEL_LOAD_DURATION: seconds})
            except BaseException as exc:
                record_error(span, exc)
                span.end()
                raise
            span.end()
            self._loaded = loaded
            if telemetry_active():
                _load_histogram().record(seconds, {gen_ai.GEN_AI_PROVIDER_NAME: self.provider_name,
                                                   **({gen_ai.GEN_AI_REQUEST_MODEL: self.model_name}
                                                      if self.model_name else {})})

    def _target_device(self, torch: Any) -> str | None:
        if self.device is not None:
            return self.device
        if self.config is not None and self.config.gpu_layers == 0:
            return "cpu"
        if self._given_model is not None:
            return None  # the user's model stays where they put it
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _torch_dtype(self, torch: Any) -> Any:
        if self.dtype is None or self.dtype == "auto" or _is_torch_dtype(self.dtype):
            return self.dtype
        return getattr(torch, self.dtype)

    def _load(self) -> _Loaded:
        transformers = import_transformers("TransformersBackend")
        torch = import_torch()
        device = self._target_device(torch)
        dtype = self._torch_dtype(torch)
        if self._given_model is not None:
            model, tokenizer = self._given_model, self._given_tokenizer
            if device is not None or (dtype is not None and dtype != "auto"):
                model.to(**{k: v for k, v in (("device", device), ("dtype", dtype))
                            if v is not None and v != "auto"})
            owns = False
        else:
            model, tokenizer = self._load_from_folder(transformers, device, dtype)
            owns = True
        model.eval()
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        generation_config = getattr(model, "generation_config", None)
        eos = eos_token_ids(generation_config, tokenizer=tokenizer)
        pad = getattr(generation_config, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None and eos:
            pad = min(eos)  # what generate would pick, without its warning
        loaded = _Loaded(torch=torch, transformers=transformers, model=model, tokenizer=tokenizer,
                         device=_model_device(model), max_context=self._resolve_max_context(model),
                         eos_ids=eos, pad_id=None if pad is None else int(pad), owns_model=owns)
        gpu.enable_request_hooks()  # the torch GPU enricher, once the model put CUDA in use
        return loaded

    def _load_from_folder(self, transformers: Any, device: str | None, dtype: Any) -> tuple[Any, Any]:
        path = self.model_path
        if path is None:
            raise ModelFolderNotFoundError(None)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ModelFolderNotFoundError(path, "it has no config.json (write one with model.save_pretrained("
                                                     "folder), and the tokenizer with tokenizer.save_pretrained("
                                                     "folder))")
        elif os.path.exists(path):
            raise ModelFolderNotFoundError(path, "it is a file; pass the folder save_pretrained wrote (GGUF files "
                                                 "are for create_engine('llama.cpp', model_path=...))")
        elif self.local_files_only:
            raise ModelFolderNotFoundError(path)
        options: dict[str, Any] = {"local_files_only": self.local_files_only, **self._load_kwargs}
        if dtype is not None:
            options[_dtype_keyword(transformers)] = dtype
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=self.local_files_only)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, **options)
        except (OSError, ValueError, KeyError) as exc:
            version = getattr(transformers, "__version__", "?")
            raise ModelLoadError(
                f"transformers {version} could not load {path!r}: {type(exc).__name__}: {exc}. Check that the folder "
                "holds config.json, the weights (model.safetensors) and the tokenizer files, and that this "
                "transformers version knows the model's architecture (pip install --upgrade transformers)."
            ) from exc
        if device is not None and "device_map" not in options:
            model.to(device)
        return model, tokenizer

    def _resolve_max_context(self, model: Any) -> int | None:
        if self._max_context is not None:
            return self._max_context
        if self.config is not None and self.config.ctx_size > 0:
            return self.config.ctx_size
        return _trained_context(model)

    def shutdown(self) -> None:
        """Release the model (and the CUDA memory it held, when the backend loaded it); twice is harmless."""
        with self._lock:
            loaded, self._loaded = self._loaded, None
            if loaded is None or not loaded.owns_model:
                return
            torch = loaded.torch
            del loaded
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    # -------------------------------------------------------------- generation

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request``: template, tokenize, generate with the token clock; exact counts and real times."""
        started_ns = time.time_ns()
        gpu.enable_request_hooks()  # a model moved to CUDA after the load: requests after this one are enriched
        with self._lock:
            return self._generate(self._require(), request, started_ns)

    def _prompt(self, loaded: _Loaded, request: InferenceRequest) -> tuple[list[int], bool]:
        """The prompt's token ids, and whether the chat template built it."""
        tokenizer = loaded.tokenizer
        if request.operation == gen_ai.OPERATION_CHAT and getattr(tokenizer, "chat_template", None):
            try:
                encoded = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)
            except Exception as exc:
                raise ChatTemplateError(
                    f"The chat template of {self.model_name or 'the model'!r} rejected the messages: "
                    f"{type(exc).__name__}: {exc}. Fix the messages (some templates need alternating user/assistant "
                    "roles or no system message), pass chat_template= to the backend, or send the request with "
                    "operation='text_completion'.") from exc
            ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
            return [int(t) for t in ids], True
        # No template (a base model): the messages' text as is, with the tokenizer's own special tokens.
        return [int(t) for t in tokenizer(request.prompt_text, add_special_tokens=True)["input_ids"]], False

    def _generate_kwargs(self, loaded: _Loaded, sampling: SamplingParams, prompt_length: int,
                         max_new: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "min_new_tokens": None, "num_beams": 1,
                                  "num_return_sequences": 1, "pad_token_id": loaded.pad_id}
        if loaded.eos_ids:
            kwargs["eos_token_id"] = sorted(loaded.eos_ids)
        if sampling.greedy:
            # Unset the sampling knobs too: a model's generation_config may carry some, and generate warns.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        kwargs["repetition_penalty"] = sampling.repeat_penalty if sampling.repeat_penalty != 1.0 else None
        if sampling.frequency_penalty or sampling.presence_penalty:
            kwargs["logits_processor"] = loaded.transformers.LogitsProcessorList([OpenAIPenalties(
                sampling.frequency_penalty, sampling.presence_penalty, prompt_length)])
        if sampling.stop:
            kwargs["stop_strings"] = list(sampling.stop)
            kwargs["tokenizer"] = loaded.tokenizer
        return kwargs

    @contextlib.contextmanager
    def _random_state(self, loaded: _Loaded, sampling: SamplingParams) -> Iterator[None]:
        """Seed sampling for this request only: the process's global RNG state is restored afterwards."""
        if sampling.greedy or sampling.seed is None:
            yield
            return
        torch = loaded.torch
        device = loaded.device
        cuda = [device.index or 0] if getattr(device, "type", None) == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(sampling.seed)
            yield

    def _generate(self, loaded: _Loaded, request: InferenceRequest, started_ns: int) -> InferenceResult:
        torch = loaded.torch
        prompt, templated = self._prompt(loaded, request)
        if not prompt:
            bos = getattr(loaded.tokenizer, "bos_token_id", None)
            if bos is None:
                raise ValidationError("InferenceRequest", "messages", "<empty text>",
                                      "text that gives at least one token (this tokenizer has no BOS token)")
            prompt = [int(bos)]
        n_prompt = len(prompt)
        limit = loaded.max_context
        if limit is not None and n_prompt >= limit:
            raise ContextOverflowError(n_prompt, limit)
        max_new = request.max_tokens if limit is None else min(request.max_tokens, limit - n_prompt)
        device = loaded.device
        input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
        kwargs = self._generate_kwargs(loaded, request.sampling, n_prompt, max_new)
        cuda = getattr(device, "type", None) == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        clock = TokenClock()
        active = telemetry_active()
        try:
            with torch.inference_mode(), self._random_state(loaded, request.sampling):
                output = loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                               streamer=clock, **kwargs)
        except BaseException as exc:
            if active:
                record_phases(get_tracer(), clock, n_prompt, error=exc)
            raise
        ended_ns = time.time_ns()
        vram_peak_mb = torch.cuda.max_memory_allocated(device) / _MIB if cuda else None
        sequences = getattr(output, "sequences", output)
        counted = count_outputs(sequences[:, n_prompt:].tolist(), loaded.eos_ids, pad_id=loaded.pad_id,
                                max_new_tokens=max_new, batched=False)[0]
        text = loaded.tokenizer.decode(counted.token_ids, skip_special_tokens=True)
        finish = counted.finish_reason
        if request.sampling.stop:
            cut = min((i for i in (text.find(s) for s in request.sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], gen_ai.FINISH_REASON_STOP
        if active:
            record_phases(get_tracer(), clock, n_prompt)
        prefill_tps, decode_tps = phase_rates(clock, n_prompt)
        first = clock.first_token_ns
        total_s = (ended_ns - started_ns) / 1e9
        n_out = counted.output_tokens
        return InferenceResult(
            text=text,
            ttft_ms=(first - started_ns) / 1e6 if first is not None else None,
            tps=n_out / total_s if total_s > 0 else None,
            vram_peak_mb=vram_peak_mb,
            prefill_tps=prefill_tps,
            input_tokens=n_prompt,
            output_tokens=n_out,
            decode_tps=decode_tps,
            total_ms=total_s * 1e3,
            finish_reason=finish,
            model=self.model_name,
            request_id=request.request_id,
            attributes={names.DEVICE: device_name(device), names.DTYPE: dtype_name(_model_dtype(loaded.model)),
                        names.CHAT_TEMPLATE_APPLIED: templated, names.GENERATION_STEPS: len(clock.steps_ns)},
        )


# ------------------------------------------------------------------ model facts

def _is_torch_dtype(value: object) -> bool:
    return type(value).__module__ == "torch" and type(value).__name__ == "dtype"


def _dtype_keyword(transformers: Any) -> str:
    """``dtype=`` since transformers 4.56; ``torch_dtype=`` before."""
    version = str(getattr(transformers, "__version__", "0"))
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _object_model_name(model: Any) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return model_display_name(name) if isinstance(name, str) and name else None


def _model_device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def _model_dtype(model: Any) -> Any:
    dtype = getattr(model, "dtype", None)
    return dtype if dtype is not None else next(model.parameters()).dtype


def _trained_context(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_attributes(model: Any) -> dict[str, Any]:
    """The load span's attributes: size, vocabulary, context, device, dtype, class."""
    attributes: dict[str, Any] = {
        names.DEVICE: device_name(_model_device(model)),
        names.DTYPE: dtype_name(_model_dtype(model)),
        names.ARCHITECTURE: type(model).__name__,
    }
    count = getattr(model, "num_parameters", None)
    if callable(count):
        attributes[names.MODEL_PARAMETERS] = int(count())
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):
        attributes[names.MODEL_VOCAB_SIZE] = vocab
    context = _trained_context(model)
    if context is not None:
        attributes[names.MODEL_TRAINED_CONTEXT] = context
    return attributes


def _create_load_histogram(meter: Any) -> Any:
    from llamatelemetry.semconv.metrics import DURATION_BUCKETS

    return meter.create_histogram(
        names.METRIC_MODEL_LOAD_DURATION, unit="s", description="Time transformers took to load a model.",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))


def _load_histogram() -> Any:
    from llamatelemetry.otel import cached_instruments

    return cached_instruments("llamatelemetry_transformers", _create_load_histogram)
