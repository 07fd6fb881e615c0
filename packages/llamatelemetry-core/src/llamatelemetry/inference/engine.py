"""``InferenceEngine``: any ``LLMBackend`` with a request span, GenAI metrics and the request hooks.

Backends report what they measured in ``InferenceResult``; the engine turns it into telemetry
the same way for every backend, so a third-party backend gets spans and metrics for free. A
backend may add child spans (prefill, decode): the request span is current while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from llamatelemetry import _runtime
from llamatelemetry._runtime import current, genai_metrics, get_tracer
from llamatelemetry.decorators import error_type, record_error
from llamatelemetry.errors import BackendNotStartedError, BackendStartError, ValidationError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.plugins import get_plugin_manager
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.content import CaptureMode, record_content
from llamatelemetry.semconv.mapping import (
    model_display_name,
    request_attributes,
    response_attributes,
    span_name,
    with_compat,
)

__all__ = ["InferenceEngine", "telemetry_active"]

log = logging.getLogger("llamatelemetry.inference")


def telemetry_active() -> bool:
    """Whether spans would be recorded: ``init()`` ran (and is not disabled) or the app set a provider."""
    telemetry = _runtime.current()
    if telemetry is not None:
        return telemetry.settings.enabled
    return _runtime._app_tracer_provider() is not None


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
        # The OpenTelemetry API only here: importing it scans entry points, and engines may be built untraced.
        from opentelemetry import trace

        backend = self.backend
        model = request.model or getattr(backend, "model_name", None)
        start_attributes = request_attributes(
            request, provider=self.provider_name, model=model,
            server_address=getattr(backend, "server_address", None), server_port=getattr(backend, "server_port", None),
        )
        name = span_name(request.operation, start_attributes.get(gen_ai.GEN_AI_REQUEST_MODEL))
        kind = trace.SpanKind.CLIENT if self.span_kind == "client" else trace.SpanKind.INTERNAL
        pm = get_plugin_manager()
        telemetry = current()
        capture = telemetry.capture_content if telemetry is not None else CaptureMode.NO_CONTENT
        metric_attributes: dict[str, Any] = {k: start_attributes[k] for k in (
            gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GEN_AI_PROVIDER_NAME, gen_ai.GEN_AI_REQUEST_MODEL,
            gen_ai.SERVER_ADDRESS, gen_ai.SERVER_PORT) if k in start_attributes}
        metrics = genai_metrics()

        with get_tracer().start_as_current_span(
            name, kind=kind, attributes=with_compat(start_attributes),
            record_exception=False, set_status_on_exception=False,
        ) as span:
            pm.request_start(span, request)
            started = time.perf_counter()
            try:
                result = backend.generate(request)
            except Exception as exc:
                elapsed = time.perf_counter() - started
                record_error(span, exc)
                pm.request_end(span, request, None, exc)
                metrics.operation_duration.record(elapsed, {**metric_attributes, gen_ai.ERROR_TYPE: error_type(exc)})
                raise
            elapsed = time.perf_counter() - started
            if not isinstance(result, InferenceResult):
                error = TypeError(f"Backend {self.name!r} returned {type(result).__name__}, not an InferenceResult.")
                record_error(span, error)
                pm.request_end(span, request, None, error)
                raise error
            span.set_attributes(with_compat(response_attributes(result)))
            record_content(span, capture, input_messages=request.messages, output_text=result.text,
                           finish_reason=result.finish_reason)
            pm.request_end(span, request, result, None)

        if result.model:
            metric_attributes[gen_ai.GEN_AI_RESPONSE_MODEL] = model_display_name(result.model)
        metrics.operation_duration.record(elapsed, metric_attributes)
        for token_type, count in ((gen_ai.TOKEN_TYPE_INPUT, result.input_tokens),
                                  (gen_ai.TOKEN_TYPE_OUTPUT, result.output_tokens)):
            if count is not None:
                metrics.token_usage.record(count, {**metric_attributes, gen_ai.GEN_AI_TOKEN_TYPE: token_type})
        if self.span_kind != "client":
            # In-process, the engine is the server: record the server-side figures it measured.
            metrics.server_request_duration.record(elapsed, metric_attributes)
            if result.ttft_ms is not None:
                metrics.server_time_to_first_token.record(result.ttft_ms / 1e3, metric_attributes)
            if result.decode_tps:
                metrics.server_time_per_output_token.record(1.0 / result.decode_tps, metric_attributes)
        return result

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<InferenceEngine {self.name!r} provider={self.provider_name!r} {state}>"
