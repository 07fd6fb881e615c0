"""``instrument_transformers``: GenAI spans and metrics on a model (or text-generation pipeline) you already have.

An instrumented model records each ``generate`` call as a span shaped like the engine's
(``{operation} {model}``, INTERNAL, ``gen_ai.*`` request attributes from the call's arguments and
the model's generation config), with exact input and output token counts read from the ids (per
sequence and in total for batches), finish reasons, time to first token from a ``TokenClock``
streamer (the caller's own streamer still gets every token), ``transformers.prefill`` /
``transformers.decode`` child spans, the request hooks (the torch GPU enricher among them) and
the GenAI metrics. A failing call ends its span with status ERROR and ``error.type``.

A pipeline (``pipeline("text-generation", ...)``) is instrumented through its model; a chat input
makes the span a ``chat``. Prompts and completions are recorded only when content capture is on
(single-sequence calls; batches record counts only).

The patch is on the instance, not the class: other models are untouched, instrumenting twice is
harmless, ``uninstrument_transformers`` restores the instance exactly as it was, and a deep copy of
an instrumented model is instrumented itself.
"""

from __future__ import annotations

import contextvars
import copy as copy_module
import enum
import functools
import logging
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs

from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as core_names
from llamatelemetry_transformers import gpu
from llamatelemetry_transformers import semconv as names
from llamatelemetry_transformers.generation import TokenClock, count_outputs, eos_token_ids, phase_rates, record_phases

if TYPE_CHECKING:
    from llamatelemetry.inference.recording import Generation

__all__ = ["instrument_transformers", "uninstrument_transformers", "is_instrumented"]

log = logging.getLogger("llamatelemetry.transformers")

T = TypeVar("T")

_STATE: Final = "_llamatelemetry_instrumentation"


class _Missing(enum.Enum):
    """The instance had no attribute of that name (an enum member survives deep copies as itself)."""

    MISSING = "missing"


_MISSING: Final = _Missing.MISSING

# Set while an instrumented generate runs: a generate inside it (an assistant model's) is not a second request.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("llamatelemetry_transformers_generate", default=False)
# Set by an instrumented pipeline around its model call: what the user gave the pipeline.
_pipeline_input: contextvars.ContextVar[_PipelineInput | None] = contextvars.ContextVar(
    "llamatelemetry_transformers_pipeline", default=None)


@attrs.frozen
class _PipelineInput:
    """What a pipeline call was given: its task and the prompt (a string, a chat, or a batch of them)."""

    task: str | None
    prompt: Any


@attrs.define
class _ModelState:
    """What instrumenting a model changed, and what its spans need."""

    previous: object
    tokenizer: Any
    model_name: str | None

    def __deepcopy__(self, memo: dict[int, Any]) -> _ModelState:
        # A copied model shares the tokenizer; copying it would cost and change nothing.
        return _ModelState(previous=copy_module.deepcopy(self.previous, memo), tokenizer=self.tokenizer,
                           model_name=self.model_name)


@attrs.define
class _PipelineState:
    """What instrumenting a pipeline changed."""

    previous: object
    instrumented_model: bool


class _MethodPatch:
    """An instance attribute standing in for a method: ``handler(obj, call, args, kwargs)`` runs each call.

    It holds its object through a weak reference (no cycle keeps a model alive), refuses to be
    pickled (a pickled patch would call the wrong object), and a deep copy of the object gets a
    patch bound to the copy.
    """

    def __init__(self, obj: object, target: Callable[..., Any], *, bound: bool,
                 handler: Callable[[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]) -> None:
        self._ref = weakref.ref(obj)
        self._target = target
        self._bound = bound
        self._handler = handler
        functools.update_wrapper(self, target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._ref()
        if obj is None:
            raise ReferenceError(f"{self._target.__name__}() of an instrumented object that no longer exists: keep a "
                                 "reference to the model (or pipeline) while you use its methods.")
        call = self._target if self._bound else self._target.__get__(obj, type(obj))
        return self._handler(obj, call, args, kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> _MethodPatch:
        obj = self._ref()
        copied = memo.get(id(obj)) if obj is not None else None
        if copied is None:
            return self  # copied on its own, not as part of its object: it keeps serving the original
        target = copy_module.deepcopy(self._target, memo) if self._bound else self._target
        return _MethodPatch(copied, target, bound=self._bound, handler=self._handler)

    def __reduce__(self) -> Any:
        raise TypeError("An instrumented transformers object cannot be pickled: call uninstrument_transformers(obj) "
                        "first, or save the model with save_pretrained().")


def _patch(obj: Any, name: str, handler: Callable[..., Any]) -> object:
    """Put a ``_MethodPatch`` for ``obj.name`` on the instance; return the instance's previous attribute."""
    previous = obj.__dict__.get(name, _MISSING)
    target = getattr(type(obj), name) if previous is _MISSING else previous
    obj.__dict__[name] = _MethodPatch(obj, target, bound=previous is not _MISSING, handler=handler)
    return previous


def _unpatch(obj: Any, name: str, previous: object) -> None:
    if previous is _MISSING:
        obj.__dict__.pop(name, None)
    else:
        obj.__dict__[name] = previous


# ------------------------------------------------------------------ kinds of object

def _is_pipeline(obj: object) -> bool:
    # Only an imported transformers can have made a pipeline: never import it just to check.
    module = sys.modules.get("transformers.pipelines.base")
    cls = getattr(module, "Pipeline", None) if module is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def _is_model(obj: object) -> bool:
    return callable(getattr(obj, "generate", None)) and hasattr(obj, "config")


def is_instrumented(obj: object) -> bool:
    """Whether ``instrument_transformers`` has instrumented ``obj`` (and it was not undone since)."""
    state = getattr(obj, "__dict__", {}).get(_STATE)
    return isinstance(state, (_ModelState, _PipelineState))


def instrument_transformers(target: T, tokenizer: Any = None, *, model_name: str | None = None) -> T:
    """Record ``target``'s ``generate`` calls (a model, or a pipeline's model) as GenAI spans and metrics.

    ``tokenizer`` finds the end-of-sequence and pad ids and turns ids into text for content
    capture; a pipeline brings its own. ``model_name`` names the model on spans (default: the
    folder or Hub id it was loaded from). Returns ``target``, instrumented in place.
    """
    if _is_pipeline(target):
        pipe: Any = target
        if is_instrumented(pipe):
            return target
        model = pipe.model
        own = not is_instrumented(model)
        instrument_transformers(model, tokenizer if tokenizer is not None else pipe.tokenizer, model_name=model_name)
        previous = _patch(pipe, "forward", _pipeline_forward)
        pipe.__dict__[_STATE] = _PipelineState(previous=previous, instrumented_model=own)
        return target
    if not _is_model(target):
        raise TypeError("instrument_transformers() takes a transformers model (with generate()) or a pipeline; got "
                        f"{type(target).__module__}.{type(target).__qualname__}.")
    model = target
    state = model.__dict__.get(_STATE)
    if isinstance(state, _ModelState):
        # Again: keep the patch, take the newer tokenizer and name if given.
        if tokenizer is not None:
            state.tokenizer = tokenizer
        if model_name is not None:
            state.model_name = model_name
        return target
    previous = _patch(model, "generate", _traced_generate)
    model.__dict__[_STATE] = _ModelState(previous=previous, tokenizer=tokenizer,
                                         model_name=model_name or _model_name(model))
    return target


def uninstrument_transformers(target: T) -> T:
    """Undo ``instrument_transformers(target)`` exactly; harmless on an object that is not instrumented."""
    obj: Any = target
    state = getattr(obj, "__dict__", {}).pop(_STATE, None)
    if isinstance(state, _PipelineState):
        _unpatch(obj, "forward", state.previous)
        if state.instrumented_model:
            uninstrument_transformers(obj.model)
    elif isinstance(state, _ModelState):
        _unpatch(obj, "generate", state.previous)
    return target


def _model_name(model: Any) -> str | None:
    from llamatelemetry.semconv.mapping import model_display_name

    name = getattr(model, "name_or_path", None)
    return model_display_name(name) if isinstance(name, str) and name else None


def _pipeline_forward(pipe: Any, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    model_inputs = args[0] if args else kwargs.get("model_inputs")
    prompt = model_inputs.get("prompt_text") if isinstance(model_inputs, Mapping) else None
    token = _pipeline_input.set(_PipelineInput(getattr(pipe, "task", None), prompt))
    try:
        return call(*args, **kwargs)
    finally:
        _pipeline_input.reset(token)


# ------------------------------------------------------------------ one generate call

def _setting(name: str, kwargs: Mapping[str, Any], *configs: Any) -> Any:
    """A generation setting as generate resolves it: the call's keyword, else the first config that sets it."""
    if name in kwargs:
        return kwargs[name]
    for config in configs:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def _chat_messages(prompt: Any) -> list[dict[str, Any]] | None:
    messages = getattr(prompt, "messages", None)  # transformers' Chat wrapper
    if isinstance(messages, list):
        return [dict(m) for m in messages if isinstance(m, Mapping)]
    return None


@attrs.define(slots=True)
class _Call:
    """The facts of one generate call that the span, hooks and metrics are made from."""

    model: Any
    state: _ModelState
    started_ns: int
    started: float
    operation: Literal["chat", "text_completion"]
    model_name: str | None
    width: int  # prompt columns at the start of each output row (0 when generate returns new tokens only)
    prompt_tokens: list[int]  # per prompt, padding excluded
    repeats: int  # num_return_sequences
    max_new: int | None
    eos_ids: frozenset[int]
    pad_id: int | None
    user_streamer: Any
    clock: TokenClock | None
    messages: list[dict[str, Any]] | None
    task: str | None


def _prompt_facts(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[int, list[int]]:
    """(prompt columns in the output rows, per-prompt token counts without padding)."""
    input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    mask = kwargs.get("attention_mask")
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    if input_ids is None or not hasattr(input_ids, "shape"):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or not hasattr(embeds, "shape"):
            return 0, []
        rows, columns = int(embeds.shape[0]), int(embeds.shape[1])
        counts = [int(n) for n in mask.sum(dim=-1).tolist()] if mask is not None else [columns] * rows
        return (1 if encoder_decoder else 0), counts  # from embeddings, generate returns the new tokens only
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    rows, columns = int(input_ids.shape[0]), int(input_ids.shape[1])
    counts = [int(n) for n in mask.sum(dim=-1).tolist()] if mask is not None else [columns] * rows
    # An encoder-decoder's output rows start with the decoder start token, not the prompt.
    return (1 if encoder_decoder else columns), counts


def _traced_generate(model: Any, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _inside.get() or not telemetry_active():
        return call(*args, **kwargs)
    started_ns, started = time.time_ns(), time.perf_counter()
    try:
        facts = _call_facts(model, args, kwargs, started_ns, started)
    except Exception:  # telemetry never breaks inference: an input we cannot read is generated untraced
        log.debug("could not read this generate call's inputs; it runs without a span", exc_info=True)
        return call(*args, **kwargs)
    if facts.clock is not None:
        kwargs = {**kwargs, "streamer": facts.clock}
    return _run_traced(facts, call, args, kwargs)


def _call_facts(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], started_ns: int,
                started: float) -> _Call:
    state: _ModelState = model.__dict__[_STATE]
    tokenizer = state.tokenizer
    config = kwargs.get("generation_config")
    default = getattr(model, "generation_config", None)
    width, prompt_tokens = _prompt_facts(model, args, kwargs)
    repeats = int(_setting("num_return_sequences", kwargs, config, default) or 1)
    max_new = _setting("max_new_tokens", kwargs, config, default)
    if max_new is None:
        max_length = _setting("max_length", kwargs, config, default)
        max_new = max_length - width if isinstance(max_length, int) and width else None
    eos_override = kwargs.get("eos_token_id")
    eos = (frozenset(int(v) for v in (eos_override if isinstance(eos_override, (list, tuple)) else [eos_override]))
           if eos_override is not None else eos_token_ids(config, default, tokenizer=tokenizer))
    pad = _setting("pad_token_id", kwargs, config, default)
    if pad is None and tokenizer is not None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None and eos:
        pad = min(eos)
    user_streamer = kwargs.get("streamer")
    num_beams = int(_setting("num_beams", kwargs, config, default) or 1)
    # generate refuses a streamer with beam search, continuous batching or a custom generate: no clock there.
    clockable = (num_beams == 1 and kwargs.get("cache_implementation") != "paged"
                 and kwargs.get("custom_generate") is None)
    pipeline_input = _pipeline_input.get()
    messages = _chat_messages(pipeline_input.prompt) if pipeline_input is not None else None
    return _Call(
        model=model, state=state, started_ns=started_ns, started=started,
        operation="chat" if messages is not None else "text_completion",
        model_name=state.model_name, width=width, prompt_tokens=prompt_tokens, repeats=repeats,
        max_new=int(max_new) if isinstance(max_new, int) else None, eos_ids=eos,
        pad_id=None if pad is None else int(pad), user_streamer=user_streamer,
        clock=TokenClock(user_streamer) if clockable else None, messages=messages,
        task=pipeline_input.task if pipeline_input is not None else None,
    )


def _sampling(facts: _Call, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's limit and sampling settings as generate resolves them, by the names the core's recorder maps."""
    config = kwargs.get("generation_config")
    default = getattr(facts.model, "generation_config", None)
    settings: dict[str, Any] = {"max_tokens": facts.max_new}
    if _setting("do_sample", kwargs, config, default):
        for key in ("temperature", "top_p", "top_k"):
            settings[key] = _setting(key, kwargs, config, default)
    else:
        settings["temperature"] = 0.0  # greedy, as the GenAI conventions express it
    penalty = _setting("repetition_penalty", kwargs, config, default)
    if penalty != 1.0:  # 1.0 is "no penalty"
        settings["repeat_penalty"] = penalty
    settings["stop"] = _setting("stop_strings", kwargs, config, default)
    return settings


def _hook_request(facts: _Call, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                  settings: Mapping[str, Any]) -> Any:
    """The call as an ``InferenceRequest`` for the request hooks, or ``None`` if it cannot be one."""
    from llamatelemetry.errors import ValidationError
    from llamatelemetry.inference.base import InferenceRequest
    from llamatelemetry.inference.types import SamplingParams
    from llamatelemetry.semconv.mapping import sampling_attributes

    messages = facts.messages
    if messages is None:
        texts = _prompt_texts(facts, args, kwargs)
        content: Any = texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts] or None
        messages = [{"role": "user", "content": content}]
    # What the span says, as SamplingParams takes it (settings generate left unset keep its defaults).
    attributes = sampling_attributes(settings)
    sampling: dict[str, Any] = {"temperature": attributes.get(gen_ai.GEN_AI_REQUEST_TEMPERATURE, 0.0)}
    if gen_ai.GEN_AI_REQUEST_TOP_P in attributes:
        sampling["top_p"] = attributes[gen_ai.GEN_AI_REQUEST_TOP_P]
    if gen_ai.GEN_AI_REQUEST_TOP_K in attributes:
        sampling["top_k"] = int(attributes[gen_ai.GEN_AI_REQUEST_TOP_K])
    if core_names.REQUEST_REPEAT_PENALTY in attributes:
        sampling["repeat_penalty"] = attributes[core_names.REQUEST_REPEAT_PENALTY]
    if gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES in attributes:
        sampling["stop"] = attributes[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES]
    try:
        return InferenceRequest(messages=messages, max_tokens=max(1, facts.max_new or 1),
                                sampling=SamplingParams(**sampling), model=facts.model_name,
                                stream=facts.user_streamer is not None, operation=facts.operation)
    except (ValidationError, TypeError, ValueError):
        log.debug("this generate call cannot be expressed as an InferenceRequest; request hooks are skipped")
        return None


def _prompt_texts(facts: _Call, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[str]:
    tokenizer = facts.state.tokenizer
    input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if tokenizer is None or input_ids is None or not hasattr(input_ids, "tolist"):
        return []
    rows = input_ids.tolist()
    rows = [rows] if rows and isinstance(rows[0], int) else rows
    pad = facts.pad_id
    return [str(tokenizer.decode([t for t in row if t != pad], skip_special_tokens=True)) for row in rows]


def _run_traced(facts: _Call, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from llamatelemetry.inference.recording import start_generation

    gpu.enable_request_hooks()  # the torch GPU enricher, once CUDA is in use
    settings = _sampling(facts, kwargs)
    generation = start_generation(
        functools.partial(_hook_request, facts, args, kwargs, settings),
        provider=gen_ai.PROVIDER_TRANSFORMERS, operation=facts.operation, model=facts.model_name, kind="internal",
        stream=facts.user_streamer is not None, sampling=settings,
        attributes={names.PIPELINE_TASK: facts.task} if facts.task else None, start_time_ns=facts.started_ns,
        input_messages=facts.messages,
    )
    if not generation.active:
        return call(*args, **kwargs)
    generation.started = facts.started
    inside = _inside.set(True)
    try:
        with generation.use():
            output = call(*args, **kwargs)
    except BaseException as exc:
        _fail(facts, generation, exc)
        raise
    finally:
        _inside.reset(inside)
    try:
        _succeed(facts, generation, output)
    except Exception:  # telemetry never breaks inference: the caller still gets its output
        log.warning("recording a transformers generate call failed; its span may lack attributes", exc_info=True)
        generation.finish()
    return output


def _fail(facts: _Call, generation: Generation, exc: BaseException) -> None:
    from opentelemetry import trace

    from llamatelemetry.otel import get_tracer

    try:
        if facts.clock is not None:
            record_phases(get_tracer(), facts.clock, sum(facts.prompt_tokens),
                          parent=trace.set_span_in_context(generation.span), error=exc)
    except Exception:  # the caller gets the model's own error, never a telemetry one
        log.warning("recording the phases of a failed transformers generate call failed", exc_info=True)
    finally:
        generation.fail(exc)


def _succeed(facts: _Call, generation: Generation, output: Any) -> None:
    from opentelemetry import trace

    from llamatelemetry.inference import InferenceResult
    from llamatelemetry.otel import get_tracer

    ended_ns = time.time_ns()
    sequences = getattr(output, "sequences", output)
    rows = sequences[:, facts.width:].tolist()
    counts = count_outputs(rows, facts.eos_ids, pad_id=facts.pad_id, max_new_tokens=facts.max_new,
                           batched=len(rows) > 1)
    per_sequence_input = [n for n in facts.prompt_tokens for _ in range(facts.repeats)]
    input_total = sum(facts.prompt_tokens)  # each prompt once, however many sequences it gave
    output_total = sum(c.output_tokens for c in counts)
    finish_reasons = [c.finish_reason for c in counts]
    clock = facts.clock
    total_s = (ended_ns - facts.started_ns) / 1e9
    attributes: dict[str, Any] = {
        gen_ai.GEN_AI_RESPONSE_FINISH_REASONS: finish_reasons,
        names.BATCH_SIZE: len(rows),
        names.SEQUENCE_OUTPUT_TOKENS: [c.output_tokens for c in counts],
        names.GENERATION_STEPS: len(clock.steps_ns) if clock is not None else (len(rows[0]) if rows else 0),
    }
    if len(per_sequence_input) == len(rows):
        attributes[names.SEQUENCE_INPUT_TOKENS] = per_sequence_input
    ttft = prefill_tps = decode_tps = None
    if clock is not None:
        first = clock.first_token_ns
        if first is not None:
            ttft = (first - facts.started_ns) / 1e9
        prefill_tps, decode_tps = phase_rates(clock, input_total)
        if facts.user_streamer is not None:
            # Each token the streamer got is a chunk, on the call's perf_counter clock.
            for step_ns in clock.steps_ns:
                generation.chunk(facts.started + (step_ns - facts.started_ns) / 1e9)
    single = len(rows) == 1
    tokenizer = facts.state.tokenizer
    text = (str(tokenizer.decode(counts[0].token_ids, skip_special_tokens=True))
            if single and generation.needs_text and tokenizer is not None else None)
    if clock is not None:
        record_phases(get_tracer(), clock, input_total, parent=trace.set_span_in_context(generation.span))
    request = generation.request
    result = InferenceResult(
        text=text or "", ttft_ms=ttft * 1e3 if ttft is not None else None,
        tps=output_total / total_s if total_s > 0 else None, input_tokens=input_total,
        output_tokens=output_total, prefill_tps=prefill_tps or None, decode_tps=decode_tps or None,
        total_ms=total_s * 1e3, finish_reason=finish_reasons[0] if single else None, model=facts.model_name,
        request_id=request.request_id if request is not None else None)
    # Batches record counts only: one text cannot stand for several sequences.
    generation.finish(result, attributes=attributes, end_time_ns=ended_ns, capture_content=single)
