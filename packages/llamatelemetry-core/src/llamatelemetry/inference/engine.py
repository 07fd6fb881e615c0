"""``InferenceEngine``: any ``LLMBackend`` with a request span, GenAI metrics and the request hooks.

Backends report what they measured in ``InferenceResult``; the engine hands it to the request
recorder (``llamatelemetry.inference.recording``), which turns it into telemetry the same way for
every backend, so a third-party backend gets spans and metrics for free. A backend may add child
spans (prefill, decode): the request span is current while it runs. A backend that streams from a
server opens the recorder's real-time phase spans on the engine's generation
(``current_generation().start_phases()`` as it sends); the engine opens none itself, so in-process
backends, which time their own phases, keep exactly one pair. A backend's ``span_attributes`` (a
mapping, read per request; the served model's facts, for instance) go on every request span from
its start, failed ones included.
"""

from __future__ import annotations

import logging
import threading

from llamatelemetry.errors import BackendNotStartedError, BackendStartError, ValidationError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.inference.recording import start_generation, telemetry_active

__all__ = ["InferenceEngine"]

log = logging.getLogger("llamatelemetry.inference")


class InferenceEngine:
    """Runs requests on a backend and records each one as a GenAI span with metrics.

    Use it as a context manager, or call ``start()`` and ``shutdown()``.
    """

    def __init__(self, backend: LLMBackend, *, name: str | None = None, provider_name: str | None = None,
                 span_kind: str | None = None) -> None:
        for method in ("start", "generate", "shutdown"):
            if not callable(getattr(backend, method, None)):
                raise TypeError(f"{type(backend).__name__} is not an LLMBackend: it has no {method}() method.")
        self.backend = backend
        self.name = name or type(backend).__name__
        # The backend knows best (one registered name may give an in-process or a server backend).
        self.provider_name: str = getattr(backend, "provider_name", None) or provider_name or "unknown"
        self.span_kind: str = getattr(backend, "span_kind", None) or span_kind or "internal"
        self._started = False
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        """Whether ``start()`` succeeded and ``shutdown()`` has not run since."""
        return self._started

    def start(self) -> InferenceEngine:
        """Start the backend; a failure raises ``BackendStartError`` naming the backend and the cause."""
        with self._lock:
            if self._started:
                return self
            try:
                self.backend.start()
            except Exception as exc:
                try:
                    self.backend.shutdown()
                except Exception:  # leave nothing running; the start error is the one to report
                    log.debug("shutdown after a failed start raised", exc_info=True)
                raise BackendStartError(f"Backend {self.name!r} failed to start: {type(exc).__name__}: {exc}") from exc
            self._started = True
        return self

    def shutdown(self) -> None:
        """Shut the backend down; calling it twice is harmless."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            self.backend.shutdown()

    def __enter__(self) -> InferenceEngine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Generate a completion for ``request``, recorded as a span when telemetry is active."""
        if not isinstance(request, InferenceRequest):
            raise ValidationError("InferenceEngine.generate", "request", f"<{type(request).__name__}>",
                                  "an InferenceRequest")
        if not self._started:
            raise BackendNotStartedError(f"Engine {self.name!r} is not started: call engine.start() "
                                         "(or use it in a with-block) before generate().")
        if not telemetry_active():
            return self.backend.generate(request)
        return self._generate_traced(request)

    def _generate_traced(self, request: InferenceRequest) -> InferenceResult:
        backend = self.backend
        generation = start_generation(
            request, provider=self.provider_name, model=request.model or getattr(backend, "model_name", None),
            server_address=getattr(backend, "server_address", None),
            server_port=getattr(backend, "server_port", None),
            attributes=getattr(backend, "span_attributes", None) or None,
            kind="client" if self.span_kind == "client" else "internal",
            # The backend marks streamed chunks, if it streams, on current_generation(): the recorder
            # then adds the stream's figures; a request that asks to stream keeps gen_ai.request.stream.
            stream=False,
        )
        with generation:
            result = backend.generate(request)
            if not isinstance(result, InferenceResult):
                raise TypeError(f"Backend {self.name!r} returned {type(result).__name__}, not an InferenceResult.")
            generation.finish(result)
        return result

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<InferenceEngine {self.name!r} provider={self.provider_name!r} {state}>"
