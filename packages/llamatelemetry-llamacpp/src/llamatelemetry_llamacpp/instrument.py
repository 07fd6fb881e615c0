"""``instrument_llamacpp``: GenAI spans and metrics on objects the user already has (a ``llama_cpp.Llama``).

An instrumented ``Llama`` records each ``create_completion``, ``create_chat_completion`` and
``__call__`` as a span shaped like the engine's (``{operation} {model}``, INTERNAL, ``gen_ai.*``
request attributes from the call's arguments, usage and finish reasons from the response) with the
GenAI metrics. A streaming call returns an iterator whose span ends when the stream is exhausted,
closed, fails or is dropped; its time to first chunk is measured from the call. Prompts and
completions are recorded only when content capture is switched on.

The patch is on the instance, not the class: other ``Llama`` objects are untouched, instrumenting
twice is harmless, and ``uninstrument_llamacpp`` restores the instance exactly as it was.

More kinds of object are added through ``INSTRUMENTERS`` (see ``register_instrumenter``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs

from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry.semconv import gen_ai
from llamatelemetry_llamacpp.semconv import semconv_finish_reason

if TYPE_CHECKING:
    from llamatelemetry.inference import InferenceResult
    from llamatelemetry.inference.recording import Generation

__all__ = [
    "instrument_llamacpp",
    "uninstrument_llamacpp",
    "is_instrumented",
    "Instrumenter",
    "INSTRUMENTERS",
    "register_instrumenter",
]

log = logging.getLogger("llamatelemetry.llamacpp")

T = TypeVar("T")


@attrs.frozen
class Instrumenter:
    """How to instrument one kind of object: ``check(obj)`` says whether ``instrument``/``uninstrument`` apply.

    ``instrument(obj, **options)`` gets the keyword options given to ``instrument_llamacpp``.
    """

    check: Callable[[object], bool]
    instrument: Callable[..., Any]
    uninstrument: Callable[[Any], Any]
    is_instrumented: Callable[[Any], bool]


# ------------------------------------------------------------------ llama_cpp.Llama

_STATE_ATTRIBUTE: Final = "_llamatelemetry_instrumentation"
_METHODS: Final[Mapping[str, str]] = {
    "create_completion": gen_ai.OPERATION_TEXT_COMPLETION,
    "create_chat_completion": gen_ai.OPERATION_CHAT,
    # llm(...) looks __call__ up on the class, which calls self.create_completion (instrumented);
    # this covers explicit llm.__call__(...) too.
    "__call__": gen_ai.OPERATION_TEXT_COMPLETION,
}
_MISSING: Final = object()

# Set while an instrumented call runs: the chat handler's inner create_completion is not a second request.
_inside_call: contextvars.ContextVar[bool] = contextvars.ContextVar("llamatelemetry_llamacpp_call", default=False)


def _is_llama(obj: object) -> bool:
    # Only an imported llama_cpp can have made a Llama: never import it just to check.
    module = sys.modules.get("llama_cpp")
    cls = getattr(module, "Llama", None) if module is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


@attrs.define
class _LlamaPatch:
    """What instrumenting a Llama changed: each method's previous instance attribute (or its absence)."""

    previous: dict[str, object]


def _llama_is_instrumented(llm: Any) -> bool:
    return isinstance(llm.__dict__.get(_STATE_ATTRIBUTE), _LlamaPatch)


def _instrument_llama(llm: Any, **options: Any) -> Any:
    if options:
        raise TypeError(f"instrument_llamacpp() takes no options for a llama_cpp.Llama; got {', '.join(options)}.")
    if _llama_is_instrumented(llm):
        return llm
    previous = {name: llm.__dict__.get(name, _MISSING) for name in _METHODS}
    ref = weakref.ref(llm)
    for name, operation in _METHODS.items():
        own = previous[name]
        # The class's function, called through a weak reference: the patch holds no cycle keeping the model alive.
        target = cast("Callable[..., Any]", getattr(type(llm), name) if own is _MISSING else own)
        setattr(llm, name, _wrap_llama_method(ref, target, bound=own is not _MISSING, operation=operation))
    llm.__dict__[_STATE_ATTRIBUTE] = _LlamaPatch(previous=previous)
    return llm


def _uninstrument_llama(llm: Any) -> Any:
    state = llm.__dict__.pop(_STATE_ATTRIBUTE, None)
    if not isinstance(state, _LlamaPatch):
        return llm
    for name, value in state.previous.items():
        if value is _MISSING:
            llm.__dict__.pop(name, None)
        else:
            llm.__dict__[name] = value
    return llm


def _wrap_llama_method(ref: weakref.ref[Any], target: Callable[..., Any], *, bound: bool,
                       operation: str) -> Callable[..., Any]:
    parameters = list(inspect.signature(target).parameters.values())[0 if bound else 1:]  # without self
    shape = _CallShape(parameters)

    @functools.wraps(target)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        llm = ref()
        if _inside_call.get() or llm is None or not telemetry_active():
            return target(*args, **kwargs) if bound else target(llm, *args, **kwargs)
        call: Callable[..., Any] = target if bound else functools.partial(target, llm)
        return _traced_call(llm, call, shape, operation, args, kwargs)

    return wrapper


def _choices(response: Any) -> list[Mapping[str, Any]]:
    choices = response.get("choices") if isinstance(response, Mapping) else None
    return [c for c in choices if isinstance(c, Mapping)] if isinstance(choices, list) else []


def _finish_reasons(choices: list[Mapping[str, Any]]) -> list[str]:
    reasons = [c.get("finish_reason") for c in choices]
    return [reason for reason in map(semconv_finish_reason, reasons) if reason]


def _choice_text(choice: Mapping[str, Any]) -> str | None:
    for key in ("text", "message", "delta"):
        value = choice.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("content"), str):
            return str(value["content"])
    return None


class _CallShape:
    """A method's parameter names and defaults, to read a call's effective arguments without ``Signature.bind``."""

    __slots__ = ("defaults", "positional")

    def __init__(self, parameters: list[inspect.Parameter]) -> None:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.positional = [p.name for p in parameters if p.kind in kinds]
        self.defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

    def arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments a call gets, defaults included (a wrong call is left for the method itself to refuse)."""
        arguments = dict(self.defaults)
        arguments.update(zip(self.positional, args, strict=False))
        arguments.update(kwargs)
        return arguments


def _traced_call(llm: Any, call: Callable[..., Any], shape: _CallShape, operation: str,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from llamatelemetry.inference.recording import request_from_payload, start_generation
    from llamatelemetry.semconv.mapping import SAMPLING_KEYS, model_display_name

    arguments = shape.arguments(args, kwargs)
    model = model_display_name(arguments.get("model") or getattr(llm, "model_path", None))
    stream = bool(arguments.get("stream"))
    generation = start_generation(
        functools.partial(request_from_payload, operation, arguments, model),
        provider=gen_ai.PROVIDER_LLAMA_CPP, operation=operation, model=model, kind="internal", stream=stream,
        sampling={key: arguments.get(key) for key in SAMPLING_KEYS},
    )
    inside = _inside_call.set(True)
    try:
        with generation.use():
            response = call(*args, **kwargs)
    except BaseException as exc:
        generation.fail(exc)
        raise
    finally:
        _inside_call.reset(inside)
    if stream:
        return _TracedStream(response, generation)
    if generation.active:
        result, extra = _result(response, generation)
        generation.finish(result, attributes=extra)
    return response


def _result(response: Any, generation: Generation) -> tuple[InferenceResult, dict[str, Any]]:
    """What a llama-cpp-python response reports, as an ``InferenceResult`` and extra span attributes."""
    from llamatelemetry.inference import InferenceResult

    body: Mapping[str, Any] = response if isinstance(response, Mapping) else {}
    choices = _choices(body)
    reasons = _finish_reasons(choices)
    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    text = _choice_text(choices[0]) if choices and generation.needs_text else None
    response_id, response_model = body.get("id"), body.get("model")
    request = generation.request
    result = InferenceResult(
        text=text or "",
        input_tokens=input_tokens if isinstance(input_tokens, int) else None,
        output_tokens=output_tokens if isinstance(output_tokens, int) else None,
        finish_reason=reasons[0] if reasons else None,
        model=response_model if isinstance(response_model, str) and response_model else None,
        response_id=response_id if isinstance(response_id, str) and response_id else None,
        request_id=request.request_id if request is not None else None,
    )
    # One choice is the rule; n > 1 keeps every finish reason on the span.
    extra = {gen_ai.GEN_AI_RESPONSE_FINISH_REASONS: reasons} if len(reasons) > 1 else {}
    return result, extra


class _TracedStream(Iterator[Any]):
    """A llama-cpp-python stream whose generation ends when it is exhausted, closed, fails or is garbage-collected.

    Only a clock read happens per chunk; metrics and attributes are computed at the end.
    """

    def __init__(self, inner: Any, generation: Generation) -> None:
        self._inner = iter(inner)
        self._generation = generation
        self._closed = False
        self._first: Mapping[str, Any] | None = None
        self._finish: list[str] = []
        self._text: list[str] | None = [] if generation.needs_text else None

    def __iter__(self) -> _TracedStream:
        return self

    def __next__(self) -> Any:
        generation = self._generation
        try:
            chunk = next(self._inner)
        except StopIteration:
            self._end(closed_early=False)
            raise
        except BaseException as exc:
            generation.fail(exc)
            raise
        choices = chunk.get("choices") if isinstance(chunk, Mapping) else None
        if choices:
            choice = choices[0]
            reason = choice.get("finish_reason")
            if reason:
                self._finish.append(semconv_finish_reason(reason) or reason)
            text = _choice_text(choice)
            if text:  # a chunk that carried output (not chat's role-only first one)
                generation.chunk()
                if self._text is not None:
                    self._text.append(text)
        if self._first is None and isinstance(chunk, Mapping):
            self._first = chunk
        return chunk

    def close(self) -> None:
        """Stop the stream early (the generation stops too) and end its span."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._inner, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._end(closed_early=True)

    def __enter__(self) -> _TracedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped before its end still ends its span, marked closed early.
        try:
            self.close()
        except Exception:  # at interpreter exit OpenTelemetry may be half torn down
            log.debug("ending an abandoned llama_cpp stream span failed", exc_info=True)

    def _end(self, *, closed_early: bool) -> None:
        from llamatelemetry.inference import InferenceResult

        generation = self._generation
        if generation.ended:
            return
        first_chunk = self._first or {}
        response_id, response_model = first_chunk.get("id"), first_chunk.get("model")
        request = generation.request
        generation.finish(InferenceResult(
            text="".join(self._text) if self._text is not None else "",
            finish_reason=self._finish[-1] if self._finish else None,  # llama-cpp-python streams carry no usage
            model=response_model if isinstance(response_model, str) and response_model else None,
            response_id=response_id if isinstance(response_id, str) and response_id else None,
            request_id=request.request_id if request is not None else None,
        ), closed_early=closed_early)


# ------------------------------------------------------------------ the extension point

def _is_client(obj: object) -> bool:
    # The client module imports httpx: only a loaded module can have made a client.
    module = sys.modules.get("llamatelemetry_llamacpp.client")
    if module is None:
        return False
    return isinstance(obj, (module.LlamaCppClient, module.AsyncLlamaCppClient))


def _client_as_is(client: Any, **options: Any) -> Any:
    # LlamaCppClient records its calls itself, while telemetry is on; patching it would double its spans.
    if options:
        raise TypeError(f"instrument_llamacpp() takes no options for a LlamaCppClient; got {', '.join(options)}.")
    return client


#: Supported kinds of object, by the name the TypeError shows; the first whose ``check`` accepts wins.
#: More are added with ``register_instrumenter``.
INSTRUMENTERS: dict[str, Instrumenter] = {
    "llama_cpp.Llama": Instrumenter(check=_is_llama, instrument=_instrument_llama,
                                    uninstrument=_uninstrument_llama, is_instrumented=_llama_is_instrumented),
    "llamatelemetry.llama.LlamaCppClient": Instrumenter(
        check=_is_client, instrument=_client_as_is, uninstrument=lambda client: client,
        is_instrumented=lambda client: True),
}


def register_instrumenter(type_name: str, instrumenter: Instrumenter) -> None:
    """Teach ``instrument_llamacpp`` another kind of object (``type_name`` is what error messages call it)."""
    INSTRUMENTERS[type_name] = instrumenter


def _instrumenter_for(obj: object) -> Instrumenter:
    for instrumenter in INSTRUMENTERS.values():
        if instrumenter.check(obj):
            return instrumenter
    raise TypeError(f"instrument_llamacpp() supports {', '.join(INSTRUMENTERS)}; got {type(obj).__module__}."
                    f"{type(obj).__qualname__}.")


def instrument_llamacpp(obj: T, **options: Any) -> T:
    """Record ``obj``'s completion and chat calls as GenAI spans and metrics, in place; returns ``obj``."""
    _instrumenter_for(obj).instrument(obj, **options)
    return obj


def uninstrument_llamacpp(obj: T) -> T:
    """Undo ``instrument_llamacpp(obj)`` exactly; harmless on an object that is not instrumented."""
    _instrumenter_for(obj).uninstrument(obj)
    return obj


def is_instrumented(obj: object) -> bool:
    """Whether ``instrument_llamacpp`` has instrumented ``obj`` (and it was not undone since)."""
    for instrumenter in INSTRUMENTERS.values():
        if instrumenter.check(obj):
            return instrumenter.is_instrumented(obj)
    return False
