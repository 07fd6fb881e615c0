"""How a client call is recorded: its facts go to the core's request recorder, its outcome ends the generation.

The client never builds spans, metrics, hook calls or content capture itself: ``CallRecording``
hands ``llamatelemetry.inference.recording.start_generation`` the request facts (operation,
model, server, stream, the payload's sampling attributes, the prompt messages, and a factory
for the ``InferenceRequest`` the request hooks see) and, at the end, marks the chunk stamps the
parser took and finishes with an ``InferenceResult`` or fails with the error.

A streamed call's generation has the recorder's real-time phase spans (``llama_cpp.prefill`` from
the send to the first output chunk, ``llama_cpp.decode`` from there to the end): the stream calls
``output_started`` as its first output chunk arrives. The server's own ``timings`` go on them as
attributes beside the client's clock (the prompt figures on the prefill span when the first chunk
carried them, the generation figures on the decode span), and all of them on the call's span.

The client's recording can be switched off on its own, while the rest of telemetry stays on:
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` naming ``llamatelemetry_llamacpp_client`` (the
``opentelemetry-instrument`` entry point of the client), or ``set_client_recording(False)``
(what ``LlamaCppClientInstrumentor().uninstrument()`` calls). Trace context is still propagated.

A recording may also be *borrowed*: a backend running under an engine marks its stream's chunks
on the engine's generation (``CallRecording.within(current_generation())``) and leaves ending
it to the engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from llamatelemetry.inference.recording import Generation, inactive_generation, start_generation
from llamatelemetry.semconv import gen_ai
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.payloads import ApiCall
from llamatelemetry_llamacpp.sse import Outcome, stats_of
from llamatelemetry_llamacpp.transport import Endpoint

if TYPE_CHECKING:
    from llamatelemetry.inference.base import InferenceResult

__all__ = ["CallRecording", "PROVIDER", "CLIENT_ENTRY_POINT", "client_recording_enabled", "set_client_recording"]

log = logging.getLogger("llamatelemetry.llama_cpp")

#: ``gen_ai.provider.name`` of the client's spans.
PROVIDER: Final = gen_ai.PROVIDER_LLAMA_CPP
#: The client's ``opentelemetry_instrumentor`` entry-point name, as ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` takes it.
CLIENT_ENTRY_POINT: Final = "llamatelemetry_llamacpp_client"
#: Set by ``set_client_recording``; ``None``: on unless the environment variable names the client.
_client_recording: bool | None = None


def set_client_recording(enabled: bool | None) -> None:
    """Switch the llama.cpp clients' call recording on or off (``None``: back to the environment's say)."""
    global _client_recording
    _client_recording = enabled


def client_recording_enabled() -> bool:
    """Whether the clients record their calls (telemetry must be active too)."""
    if _client_recording is not None:
        return _client_recording
    disabled = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    if not disabled:
        return True
    names_off = {name.strip() for name in disabled.split(",")}
    return CLIENT_ENTRY_POINT not in names_off and "*" not in names_off


#: The server's timings that describe each phase (the prompt's on the prefill span, the rest on the decode span).
_PREFILL_TIMINGS: Final = frozenset({names.TIMINGS_CACHE_N, names.TIMINGS_PROMPT_N, names.TIMINGS_PROMPT_MS,
                                     names.TIMINGS_PROMPT_PER_SECOND})
_DECODE_TIMINGS: Final = frozenset({names.TIMINGS_PREDICTED_N, names.TIMINGS_PREDICTED_MS,
                                    names.TIMINGS_PREDICTED_PER_SECOND})


class CallRecording:
    """One call's generation (possibly inactive), the clock its figures are timed from, and who ends it."""

    __slots__ = ("generation", "owned", "started")

    def __init__(self, generation: Generation, *, owned: bool) -> None:
        self.generation = generation
        #: Whether this call ends the generation (``False``: it only marks chunks on someone else's).
        self.owned = owned
        #: ``time.perf_counter()`` the call's figures count from: the generation's own start when recorded.
        self.started = generation.started if generation.active else time.perf_counter()

    @classmethod
    def start(cls, call: ApiCall, endpoint: Endpoint, model: str | None,
              attributes: Mapping[str, Any] | None = None) -> CallRecording:
        """Start recording ``call`` as a CLIENT generation (inactive when telemetry or client recording is off)."""
        if not client_recording_enabled():
            return cls(inactive_generation(), owned=True)
        generation = start_generation(
            lambda: call.inference_request(model), provider=PROVIDER, operation=call.operation, model=model,
            server_address=endpoint.address, server_port=endpoint.port, kind="client", stream=call.stream,
            sampling=call.sampling(), input_messages=call.input_messages(), attributes=attributes,
        )
        return cls(generation, owned=True)

    @classmethod
    def within(cls, generation: Generation) -> CallRecording:
        """Mark this call's chunks on ``generation`` (an engine's), which its owner ends."""
        return cls(generation, owned=False)

    @property
    def keeps_text(self) -> bool:
        """Whether the generated text must be kept for ``end`` (content capture or a request hook wants it)."""
        return self.owned and self.generation.needs_text

    def current(self) -> contextlib.AbstractContextManager[Generation]:
        """Make the generation's span current for a block (so instrumented HTTP libraries nest under it)."""
        return self.generation.use() if self.owned else contextlib.nullcontext(self.generation)

    def output_started(self, outcome: Outcome) -> None:
        """The stream's first output chunk arrived: the prefill phase span ends now. Never raises."""
        generation = self.generation
        if not generation.active or not outcome.stamps:
            return
        try:
            timings = outcome.timings() if outcome.timings_json is not None else None
            prompt_side = ({key: value for key, value in timings.attributes().items() if key in _PREFILL_TIMINGS}
                           if timings is not None else None)
        except Exception:  # telemetry never reaches the caller: the phase ends without the server's figures
            log.debug("reading the first chunk's timings for telemetry failed", exc_info=True)
            prompt_side = None
        generation.output_started(outcome.stamps[0], attributes=prompt_side)

    def end(self, outcome: Outcome | None, error: BaseException | None, *, ended_at: float | None = None,
            closed_early: bool = False) -> None:
        """Mark the outcome's chunks, then finish (or fail) the generation if this call owns it. Never raises."""
        generation = self.generation
        if not generation.active:
            return
        if outcome is not None:
            chunk = generation.chunk
            for at in outcome.stamps:
                chunk(at)
        if not self.owned:
            return
        if error is not None:
            generation.fail(error)
            return
        decode_side: dict[str, object] | None = None
        try:
            result = self._result(outcome, ended_at)
            if result is not None and generation.stream:
                decode_side = {key: value for key, value in result.attributes.items() if key in _DECODE_TIMINGS}
        except Exception:  # telemetry never reaches the caller: the generation ends without the figures
            log.warning("reading a llama.cpp response's figures for telemetry failed", exc_info=True)
            result = None
        generation.finish(result, closed_early=closed_early, phase_attributes=decode_side)

    def _result(self, outcome: Outcome | None, ended_at: float | None) -> InferenceResult | None:
        if outcome is None:
            return None
        stats = stats_of(outcome, self.started, ended_at if ended_at is not None else time.perf_counter(),
                         ended=True, closed_early=False)
        request = self.generation.request
        # The recorder puts the stream's own attributes on the span from the chunk marks; the result
        # carries only what it cannot know, the server's timings.
        timings = stats.timings.attributes() if stats.timings is not None else {}
        return stats.to_inference_result(outcome.text(), request.request_id if request is not None else None,
                                         attributes=timings)

    @contextlib.contextmanager
    def failing_on_error(self) -> Iterator[None]:
        """Fail an owned generation with any error the block raises (then re-raise it)."""
        try:
            yield
        except BaseException as exc:
            if self.owned:
                self.generation.fail(exc)
            raise
