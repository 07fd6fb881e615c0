"""The request recorder: the one place a generation becomes a GenAI span, metrics and hook calls.

Every integration (the engine, the llama.cpp client, an instrumented ``Llama`` or transformers
model, a third-party backend that does not go through the engine) describes a generation with
``start_generation``, marks streamed chunks with ``Generation.chunk()`` and ends it with
``Generation.finish(result)`` or ``Generation.fail(error)``. The recorder alone decides whether
telemetry is on, builds the request and response attributes, calls the request hooks, captures
and redacts content, and records the GenAI metrics, so their contract changes in one place.

Example (a client library recording its own calls)::

    from llamatelemetry.inference import InferenceRequest, InferenceResult
    from llamatelemetry.inference.recording import start_generation

    def ask(request: InferenceRequest) -> InferenceResult:
        with start_generation(request, provider="my_engine", kind="client",
                              server_address="gpu-box", server_port=8000) as generation:
            reply = my_http_call(request)
            result = InferenceResult(text=reply["text"], input_tokens=reply["prompt_tokens"],
                                     output_tokens=reply["completion_tokens"], request_id=request.request_id)
            generation.finish(result)
            return result

A streamed generation over the network (``kind="client"``) also gets two real-time child spans
for the phases its caller can observe: ``{provider}.prefill`` from the start to the first output
chunk (waiting for the first token: network, queue and prompt processing) and ``{provider}.decode``
from the first output chunk to the end. They carry the names of the in-process backends' own
phase spans (``llama_cpp.prefill``, ``transformers.decode``, ...), so a waterfall reads the same
in both modes; each is started and ended as its phase starts and ends, never back-dated. A backend
that streams from a server under an engine (whose generation starts without them) opens them on
the engine's generation with ``start_phases()`` as it sends its request.

Telemetry failures never reach the caller: a recorder error is logged once and the
generation goes on unrecorded.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from llamatelemetry import _runtime
from llamatelemetry.decorators import error_type, record_error
from llamatelemetry.inference.base import InferenceRequest, InferenceResult
from llamatelemetry.plugins import get_plugin_manager
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as names
from llamatelemetry.semconv.content import CaptureMode, record_content
from llamatelemetry.semconv.mapping import (
    model_display_name,
    request_attributes,
    response_attributes,
    sampling_attributes,
    span_name,
    with_compat,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Generation", "start_generation", "current_generation", "telemetry_active", "request_from_payload",
           "phase_span_name", "inactive_generation"]

log = logging.getLogger("llamatelemetry.inference")

#: A request, or a callable that builds one only when a request hook needs it (``None``: it cannot be one).
RequestSource = InferenceRequest | Callable[[], InferenceRequest | None] | None

_METRIC_KEYS: Final = (gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GEN_AI_PROVIDER_NAME, gen_ai.GEN_AI_REQUEST_MODEL,
                       gen_ai.SERVER_ADDRESS, gen_ai.SERVER_PORT)

_current: contextvars.ContextVar[Generation | None] = contextvars.ContextVar(
    "llamatelemetry_current_generation", default=None)
_failures_logged: set[str] = set()


def phase_span_name(provider: str, phase: str) -> str:
    """The name of a generation phase's span: ``{gen_ai.provider.name}.{phase}`` (``llama_cpp.prefill``)."""
    return f"{provider}.{phase}"


def _wall_ns(at: float) -> int:
    """The ``time.time_ns()`` of a ``time.perf_counter()`` reading taken moments ago."""
    return time.time_ns() - int((time.perf_counter() - at) * 1e9)


def telemetry_active() -> bool:
    """Whether generations are recorded: ``init()`` ran (and is not disabled) or the app set a provider."""
    telemetry = _runtime.current()
    if telemetry is not None:
        return telemetry.settings.enabled
    return _runtime._app_tracer_provider() is not None


def current_generation() -> Generation:
    """The generation whose span is current in this context (inside ``with generation:`` or ``use()``).

    A backend running under an engine uses it to mark streamed chunks on the engine's
    generation. Outside any generation it returns an inactive one whose methods do nothing.
    """
    return _current.get() or _NOOP


_PAYLOAD_SAMPLING: Final = ("temperature", "top_p", "top_k", "repeat_penalty", "frequency_penalty",
                             "presence_penalty", "seed", "stop")


def request_from_payload(operation: str, payload: Mapping[str, Any],
                         model: str | None = None) -> InferenceRequest | None:
    """An OpenAI-style call (``messages`` or ``prompt``, ``max_tokens``, sampling keys) as an ``InferenceRequest``.

    For the request hooks of integrations that see raw payloads; ``None`` when the call cannot be
    one (token-id prompts, values out of range). Absent fields take ``InferenceRequest``'s defaults.
    """
    from llamatelemetry.errors import ValidationError
    from llamatelemetry.inference.types import SamplingParams

    if operation == gen_ai.OPERATION_CHAT:
        messages = payload.get("messages")
    else:
        prompt = payload.get("prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
    if messages is None:
        return None
    sampling = {key: payload[key] for key in _PAYLOAD_SAMPLING if payload.get(key) is not None}
    if isinstance(sampling.get("stop"), str):
        sampling["stop"] = [sampling["stop"]]
    options: dict[str, Any] = {"model": model, "stream": bool(payload.get("stream")), "operation": operation}
    max_tokens = payload.get("max_tokens", payload.get("n_predict"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1:
        options["max_tokens"] = max_tokens
    try:
        return InferenceRequest(messages=messages, sampling=SamplingParams(**sampling), **options)
    except (ValidationError, TypeError, ValueError):
        log.debug("this %s call cannot be expressed as an InferenceRequest; request hooks are skipped", operation)
        return None


def _telemetry_failed(what: str) -> None:
    if what not in _failures_logged:
        _failures_logged.add(what)
        log.warning("llamatelemetry failed while %s; the generation goes on without it "
                    "(further failures are logged at debug level)", what, exc_info=True)
    else:
        log.debug("llamatelemetry failed again while %s", what, exc_info=True)


class Generation:
    """One generation being recorded: its span, clock, chunk timestamps and how it ends.

    Made by ``start_generation``; ends exactly once, by ``finish`` or ``fail`` (later calls do
    nothing). As a context manager (``with`` or ``async with``) it makes its span current for
    the block, fails on an exception and finishes, without a result, if the block did not.
    """

    __slots__ = (
        "_capture",
        "_compat",
        "_ended",
        "_hooks",
        "_input_messages",
        "_metric_attributes",
        "_phase",
        "_phase_span",
        "_provider",
        "_request",
        "_scopes",
        "_wants_result",
        "kind",
        "operation",
        "server_side",
        "span",
        "stamps",
        "started",
        "stream",
    )

    def __init__(self, span: Span, *, operation: str, kind: str, stream: bool, server_side: bool,
                 metric_attributes: dict[str, Any], capture: CaptureMode, request: InferenceRequest | None,
                 input_messages: Sequence[Mapping[str, Any]] | None, started: float, hooks: bool = False,
                 wants_result: bool = False, compat: frozenset[str] | None = None) -> None:
        #: The generation's span (make child spans under it with ``use()``).
        self.span = span
        self.operation = operation
        self.kind = kind
        self.stream = stream
        #: Whether the ``gen_ai.server.*`` metrics are recorded (in-process: the caller is the server).
        self.server_side = server_side
        #: ``time.perf_counter()`` when the generation started.
        self.started = started
        #: ``time.perf_counter()`` of each streamed chunk, as marked by ``chunk()``.
        self.stamps: list[float] = []
        self._metric_attributes = metric_attributes
        self._capture = capture
        self._request = request
        #: Whether the request hooks run for this generation, and whether one reads the result.
        self._hooks = hooks
        self._wants_result = wants_result
        self._input_messages = input_messages
        #: The semantic-convention compatibility copies asked for (``init(semconv_compat=...)``); ``None``:
        #: read from the running telemetry when the span ends.
        self._compat = compat
        self._ended = False
        self._scopes: list[_Current] = []
        #: The open phase span and its phase (``None``: no phase spans for this generation, or all ended).
        self._phase_span: Span | None = None
        self._phase: str | None = None
        self._provider = str(metric_attributes.get(gen_ai.GEN_AI_PROVIDER_NAME) or "gen_ai")

    # ------------------------------------------------------------------ state

    @property
    def active(self) -> bool:
        """Whether telemetry records this generation (``False`` when telemetry is off)."""
        return True

    @property
    def ended(self) -> bool:
        """Whether ``finish`` or ``fail`` has run."""
        return self._ended

    @property
    def request(self) -> InferenceRequest | None:
        """The request the request hooks see (``None`` when no hook takes one, or none could be built)."""
        return self._request

    @property
    def needs_text(self) -> bool:
        """Whether ``finish`` should get the generated text (content capture or a request hook wants it)."""
        if self._wants_result:
            return True
        capture = self._capture
        return (capture.on_span or capture.on_event) and self.operation != gen_ai.OPERATION_EMBEDDINGS

    # ------------------------------------------------------------------ the hot path

    def chunk(self, at: float | None = None) -> None:
        """Mark a streamed chunk that carried output, now or at ``at`` (a ``time.perf_counter()`` value)."""
        self.stamps.append(time.perf_counter() if at is None else at)
        if self._phase == names.PHASE_PREFILL:
            self.output_started(at)

    def output_started(self, at: float | None = None, *, attributes: Mapping[str, Any] | None = None) -> None:
        """The first output arrived (now, or at ``at``): end the prefill phase span and open the decode one.

        For integrations that take their chunk stamps themselves and mark them on the generation
        later: call it as the first output chunk arrives, so the phase spans end in real time
        (``chunk()`` does it by itself on the first chunk). ``attributes`` go on the prefill span
        before it ends (the server's prompt timings, when the first chunk carried them). Does
        nothing when the generation has no phase spans or the phase is over. Never raises.
        """
        if self._phase != names.PHASE_PREFILL:
            return
        try:
            self._switch_phase(at, attributes)
        except Exception:
            self._phase = None
            _telemetry_failed("recording a generation's phases")

    def start_phases(self) -> None:
        """Open the prefill phase span now, for a generation that was started without phase spans.

        For a backend under an engine that streams from a server: it calls this just before it
        sends the request, so its engine's generation gets the same real-time ``{provider}.prefill``
        / ``{provider}.decode`` children as a streamed client call (``output_started`` or the first
        ``chunk()`` then switches to decode). Does nothing once phases were opened, after the first
        chunk, or after the end; in-process backends, which time their own phases, never call it.
        Never raises.
        """
        if self._ended or self._phase is not None or self.stamps or not self.span.is_recording():
            return
        try:
            self._open_phase(names.PHASE_PREFILL, None)
        except Exception:
            self._phase = None
            _telemetry_failed("recording a generation's phases")

    def set_phase_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Put ``attributes`` on the phase span now open (the decode one once output arrived); never raises.

        For a backend whose engine ends the generation: the server's figures of the phase it saw
        end (its generation timings) go beside the phase, as ``finish(phase_attributes=...)`` puts them.
        """
        span = self._phase_span
        if span is None or not attributes:
            return
        try:
            if span.is_recording():
                span.set_attributes(attributes)
        except Exception:
            _telemetry_failed("recording a generation's phases")

    def _open_phase(self, phase: str, start_time_ns: int | None) -> None:
        self._phase_span = _runtime.get_tracer().start_span(
            phase_span_name(self._provider, phase), context=trace.set_span_in_context(self.span),
            attributes={names.PHASE: phase}, start_time=start_time_ns)
        self._phase = phase

    def _switch_phase(self, at: float | None, attributes: Mapping[str, Any] | None) -> None:
        span = self._phase_span
        at_ns = _wall_ns(at) if at is not None else time.time_ns()
        if span is not None:
            if attributes and span.is_recording():
                span.set_attributes(attributes)
            span.end(end_time=at_ns)
        self._open_phase(names.PHASE_DECODE, at_ns)

    def _end_phase(self, error: BaseException | None, attributes: Mapping[str, Any] | None,
                   end_time_ns: int | None) -> None:
        span = self._phase_span
        self._phase_span = self._phase = None
        if span is None:
            return
        if span.is_recording():
            if attributes:
                span.set_attributes(attributes)
            if error is not None:
                record_error(span, error)
        span.end(end_time=end_time_ns)

    def use(self) -> contextlib.AbstractContextManager[Generation]:
        """Make the span (and this generation) current for a block, without ending anything."""
        return _Current(self)

    # ------------------------------------------------------------------ the end

    def finish(self, result: InferenceResult | None = None, *, attributes: Mapping[str, Any] | None = None,
               closed_early: bool = False, end_time_ns: int | None = None, capture_content: bool = True,
               phase_attributes: Mapping[str, Any] | None = None) -> None:
        """End the generation as a success described by ``result`` (``None``: nothing was measured).

        ``attributes`` are extra response attributes for the span (they win over the result's).
        ``closed_early`` says a stream was closed by its reader before its end. ``capture_content``
        false keeps the content off the span even when capture is on (a batch, whose one text
        cannot stand for several sequences). ``phase_attributes`` go on the phase span still open
        (the decode one, when output arrived). Never raises.
        """
        if self._ended:
            return
        self._ended = True
        elapsed = time.perf_counter() - self.started
        try:
            if self._phase_span is not None:
                extra = dict(phase_attributes or {})
                if (self._phase == names.PHASE_DECODE and result is not None and result.output_tokens
                        and names.PHASE_TOKENS not in extra):
                    extra[names.PHASE_TOKENS] = result.output_tokens - 1  # the decode phase's: after the first
                self._end_phase(None, extra, end_time_ns)
            self._finish(result, attributes, closed_early, elapsed, end_time_ns, capture_content)
        except Exception:
            _telemetry_failed("ending a generation")
            with contextlib.suppress(Exception):
                self.span.end(end_time=end_time_ns)

    def fail(self, error: BaseException, *, end_time_ns: int | None = None) -> None:
        """End the generation as failed by ``error`` (status ERROR, ``error.type``). Never raises."""
        if self._ended:
            return
        self._ended = True
        elapsed = time.perf_counter() - self.started
        try:
            span = self.span
            if self._phase_span is not None:
                self._end_phase(error, None, end_time_ns)
            self._record_chunks(self._metric_attributes)
            if (self.stream or self.stamps) and span.is_recording():
                # What streamed before the failure belongs to the failed generation's record too.
                span.set_attributes(self._stream_attributes(closed_early=False))
            record_error(span, error)
            if self._hooks:
                get_plugin_manager().request_end(span, self._request, None, error)
            span.end(end_time=end_time_ns)
            _runtime.genai_metrics().operation_duration.record(
                elapsed, {**self._metric_attributes, gen_ai.ERROR_TYPE: error_type(error)})
        except Exception:
            _telemetry_failed("recording a failed generation")
            with contextlib.suppress(Exception):
                self.span.end(end_time=end_time_ns)

    def _finish(self, result: InferenceResult | None, extra: Mapping[str, Any] | None, closed_early: bool,
                elapsed: float, end_time_ns: int | None, capture_content: bool) -> None:
        span = self.span
        metric_attributes = self._metric_attributes
        response_model = model_display_name(result.model) if result is not None else None
        if response_model:
            metric_attributes = {**metric_attributes, gen_ai.GEN_AI_RESPONSE_MODEL: response_model}
        if span.is_recording():
            # The chunk marks' figures first: what the backend reported in its result wins.
            attributes = self._stream_attributes(closed_early) if self.stream or self.stamps or closed_early else {}
            if result is not None:
                attributes.update(response_attributes(result))
            if extra:
                attributes.update(extra)
            if attributes:
                span.set_attributes(with_compat(attributes, self._compat))
            capture = self._capture
            if (result is not None and capture_content and capture is not CaptureMode.NO_CONTENT
                    and self.operation != gen_ai.OPERATION_EMBEDDINGS):
                record_content(span, capture, input_messages=self._input_messages, output_text=result.text,
                               finish_reason=result.finish_reason)
        if self._hooks:
            get_plugin_manager().request_end(span, self._request, result, None)
        span.end(end_time=end_time_ns)

        metrics = _runtime.genai_metrics()
        metrics.operation_duration.record(elapsed, metric_attributes)
        if result is not None:
            for token_type, count in ((gen_ai.TOKEN_TYPE_INPUT, result.input_tokens),
                                      (gen_ai.TOKEN_TYPE_OUTPUT, result.output_tokens)):
                if count is not None:
                    metrics.token_usage.record(count, {**metric_attributes, gen_ai.GEN_AI_TOKEN_TYPE: token_type})
        self._record_chunks(metric_attributes)
        if self.server_side:
            metrics.server_request_duration.record(elapsed, metric_attributes)
            if result is not None:
                if result.ttft_ms is not None:
                    metrics.server_time_to_first_token.record(result.ttft_ms / 1e3, metric_attributes)
                if result.decode_tps:
                    metrics.server_time_per_output_token.record(1.0 / result.decode_tps, metric_attributes)

    def _stream_attributes(self, closed_early: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {names.STREAM_CHUNKS: len(self.stamps)}
        if self.stamps:
            attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = self.stamps[0] - self.started
        if closed_early:
            attributes[names.STREAM_CLOSED_EARLY] = True
        return attributes

    def _record_chunks(self, metric_attributes: Mapping[str, Any]) -> None:
        stamps = self.stamps
        if not stamps:
            return
        # Every inter-chunk gap is kept (a real distribution), computed only now, off the hot path.
        metrics = _runtime.genai_metrics()
        metrics.time_to_first_chunk.record(stamps[0] - self.started, metric_attributes)
        per_chunk = metrics.time_per_output_chunk.record
        for previous, now in itertools.pairwise(stamps):
            per_chunk(now - previous, metric_attributes)

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Generation:
        self._enter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Generation:
        self._enter()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._exit(exc)

    def _enter(self) -> None:
        scope = _Current(self)
        scope.__enter__()
        self._scopes.append(scope)

    def _exit(self, exc: BaseException | None) -> None:
        if self._scopes:
            self._scopes.pop().__exit__()
        if exc is not None:
            self.fail(exc)
        else:
            self.finish()

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"<Generation {self.operation} kind={self.kind} stream={self.stream} {state}>"


class _Current:
    """``Generation.use()``: the span and the generation current for a block (a class: cheaper than a generator)."""

    __slots__ = ("_attached", "_generation", "_token")

    def __init__(self, generation: Generation) -> None:
        self._generation = generation

    def __enter__(self) -> Generation:
        generation = self._generation
        self._token = _current.set(generation)
        self._attached = context_api.attach(trace.set_span_in_context(generation.span))
        return generation

    def __exit__(self, *exc_info: object) -> None:
        context_api.detach(self._attached)
        _current.reset(self._token)


class _InactiveGeneration(Generation):
    """The generation handed out while telemetry is off: every method returns at once."""

    __slots__ = ()

    def __init__(self) -> None:
        self.stamps = []
        self._ended = True
        self._request = None
        self._hooks = False
        self._wants_result = False
        self._capture = CaptureMode.NO_CONTENT
        self._compat = frozenset()
        self.operation = gen_ai.OPERATION_CHAT
        self.kind = "internal"
        self.stream = False
        self.server_side = False
        self.started = 0.0
        self._scopes = []
        self._phase_span = None
        self._phase = None
        self._provider = "gen_ai"

    @property
    def active(self) -> bool:
        return False

    @property
    def span(self) -> Span:  # type: ignore[override]
        return trace.INVALID_SPAN

    @property
    def needs_text(self) -> bool:
        return False

    def chunk(self, at: float | None = None) -> None:
        return None

    def output_started(self, at: float | None = None, *, attributes: Mapping[str, Any] | None = None) -> None:
        return None

    def start_phases(self) -> None:
        return None

    def set_phase_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def use(self) -> contextlib.AbstractContextManager[Generation]:
        return contextlib.nullcontext(self)

    def finish(self, result: InferenceResult | None = None, *, attributes: Mapping[str, Any] | None = None,
               closed_early: bool = False, end_time_ns: int | None = None, capture_content: bool = True,
               phase_attributes: Mapping[str, Any] | None = None) -> None:
        return None

    def fail(self, error: BaseException, *, end_time_ns: int | None = None) -> None:
        return None

    def _enter(self) -> None:
        return None

    def _exit(self, exc: BaseException | None) -> None:
        return None

    def __repr__(self) -> str:
        return "<Generation inactive>"


_NOOP: Final[Generation] = _InactiveGeneration()


def inactive_generation() -> Generation:
    """The generation that records nothing (what ``start_generation`` returns while telemetry is off).

    For an integration whose own recording the user switched off while telemetry stays on.
    """
    return _NOOP


def start_generation(
    request: RequestSource = None,
    *,
    provider: str,
    operation: str | None = None,
    model: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
    kind: Literal["client", "internal"] = "internal",
    stream: bool | None = None,
    sampling: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    input_messages: Sequence[Mapping[str, Any]] | None = None,
    server_side: bool | None = None,
    start_time_ns: int | None = None,
    phases: bool | None = None,
) -> Generation:
    """Start recording one generation and return its ``Generation`` (inactive when telemetry is off).

    ``request`` describes the call: an ``InferenceRequest``, or a callable that builds one, called
    only when a request hook is installed (return ``None`` when the call cannot be one: the hooks
    are then skipped). ``operation``, ``model`` and ``stream`` default to the request's.
    ``provider`` is ``gen_ai.provider.name``; ``kind`` is ``"client"`` for a call over the network
    to a server, else ``"internal"``. ``sampling`` gives the call's sampling settings by the names
    in ``llamatelemetry.semconv.mapping.SAMPLING_KEYS`` (``max_tokens``, ``temperature``, ``stop``,
    ...) when there is no ``InferenceRequest``: the recorder maps them to ``gen_ai.request.*``.
    ``attributes`` are extra request attributes of the integration's own. ``input_messages`` are the prompt messages
    for content capture when there is no ``InferenceRequest``. ``server_side`` (default: in-process,
    ``kind == "internal"``) also records the ``gen_ai.server.*`` metrics. ``phases`` (default: a
    streamed ``"client"`` generation) opens the real-time ``{provider}.prefill`` / ``{provider}.decode``
    child spans (see ``Generation.output_started``); in-process backends make their own. The span
    is not made current: use the generation as a context manager, or ``use()``, for that.
    """
    if not telemetry_active():
        return _NOOP
    try:
        return _start(request, provider, operation, model, server_address, server_port, kind, stream,
                      sampling, attributes, input_messages, server_side, start_time_ns, phases)
    except Exception:
        _telemetry_failed("starting a generation")
        return _NOOP


def _start(source: RequestSource, provider: str, operation: str | None, model: str | None,
           server_address: str | None, server_port: int | None, kind: str, stream: bool | None,
           sampling: Mapping[str, Any] | None, extra: Mapping[str, Any] | None,
           input_messages: Sequence[Mapping[str, Any]] | None,
           server_side: bool | None, start_time_ns: int | None, phases: bool | None) -> Generation:
    known = source if isinstance(source, InferenceRequest) else None
    op = operation or (known.operation if known is not None else gen_ai.OPERATION_CHAT)
    start_attributes = request_attributes(known, operation=op, provider=provider, model=model,
                                          server_address=server_address, server_port=server_port)
    if sampling:
        start_attributes.update(sampling_attributes(sampling))
    if extra:
        start_attributes.update(extra)
    streaming = stream if stream is not None else (known.stream if known is not None else False)
    if streaming:
        start_attributes[gen_ai.GEN_AI_REQUEST_STREAM] = True
    metric_attributes: dict[str, Any] = {key: start_attributes[key] for key in _METRIC_KEYS if key in start_attributes}
    telemetry = _runtime.current()
    if telemetry is not None:
        capture, compat = telemetry.capture_content, telemetry.settings.semconv_compat
    else:
        capture, compat = CaptureMode.NO_CONTENT, frozenset()
    pm = get_plugin_manager()
    needs = pm.request_hook_needs()
    request: InferenceRequest | None = None
    if needs.request:
        # Built only for hooks that declare ``request``. A call that cannot be one runs only the hooks that
        # take no request.
        request = known if known is not None else (source() if callable(source) else None)
    hooks = needs.any
    messages = input_messages
    if messages is None and capture is not CaptureMode.NO_CONTENT:
        resolved = request or known
        if resolved is None and callable(source) and not needs.request:  # not already asked above
            resolved = source()
        messages = resolved.messages if resolved is not None else None
    span = _runtime.get_tracer().start_span(
        span_name(op, start_attributes.get(gen_ai.GEN_AI_REQUEST_MODEL)),
        kind=SpanKind.CLIENT if kind == "client" else SpanKind.INTERNAL,
        attributes=with_compat(start_attributes, compat), start_time=start_time_ns,
    )
    generation = Generation(
        span, operation=op, kind=kind, stream=streaming,
        server_side=server_side if server_side is not None else kind != "client",
        metric_attributes=metric_attributes, capture=capture, request=request,
        input_messages=messages, started=time.perf_counter(), hooks=hooks, wants_result=hooks and needs.result,
        compat=compat,
    )
    if hooks:
        pm.request_start(span, request)
        generation.started = time.perf_counter()  # the hooks' own time is not the generation's
    if (phases if phases is not None else streaming and kind == "client") and span.is_recording():
        generation._open_phase(names.PHASE_PREFILL, getattr(span, "start_time", None))
    return generation
