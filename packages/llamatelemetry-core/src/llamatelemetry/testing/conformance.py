"""A conformance suite that any ``LLMBackend`` implementation runs against itself.

Subclass ``BackendConformance`` in a test module and provide a ``backend`` fixture that returns
a new, not yet started backend::

    from llamatelemetry.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            return MyBackend(model_path=tiny_model)

Override ``conformance_messages`` to change the prompt, and ``context_window`` (the backend's
context size in tokens) to have the suite check that a prompt too long for it raises
``llamatelemetry.errors.ContextOverflowError``. Every test starts and shuts down the backend itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llamatelemetry.errors import BackendNotStartedError, ContextOverflowError
from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.types import SamplingParams
from llamatelemetry.semconv import gen_ai
from llamatelemetry.testing import InMemoryTelemetry

__all__ = ["BackendConformance", "FINISH_REASONS"]

FINISH_REASONS = {"stop", "length", "content_filter", "tool_call", "error"}


class BackendConformance:
    """The behaviour every backend owes its users; each test says which promise it checks."""

    max_tokens: int = 8

    @pytest.fixture
    def backend(self) -> LLMBackend:
        """Return a new, not started backend (subclasses must override)."""
        raise NotImplementedError("Subclass BackendConformance and define a `backend` fixture returning a new backend.")

    @pytest.fixture
    def conformance_messages(self) -> list[dict[str, Any]]:
        """The chat messages the suite sends."""
        return [{"role": "user", "content": "Say hello."}]

    @pytest.fixture
    def context_window(self) -> int | None:
        """The backend's context window in tokens; ``None`` (the default) skips the overflow check."""
        return None

    @pytest.fixture
    def started(self, backend: LLMBackend) -> Iterator[LLMBackend]:
        """The backend, started, and shut down after the test."""
        backend.start()
        try:
            yield backend
        finally:
            backend.shutdown()

    def _request(self, messages: list[dict[str, Any]], **overrides: Any) -> InferenceRequest:
        options: dict[str, Any] = {"max_tokens": self.max_tokens, "sampling": SamplingParams(temperature=0.0, seed=1)}
        options.update(overrides)
        return InferenceRequest(messages=messages, **options)

    def test_follows_the_protocol(self, backend: LLMBackend) -> None:
        """The backend has start, generate and shutdown."""
        assert isinstance(backend, LLMBackend)

    def test_generate_returns_a_result(self, started: LLMBackend, conformance_messages: list[dict[str, Any]]) -> None:
        """generate() returns an InferenceResult whose text is a string."""
        result = started.generate(self._request(conformance_messages))
        assert isinstance(result, InferenceResult)
        assert isinstance(result.text, str)

    def test_token_counts_are_exact_and_bounded(self, started: LLMBackend,
                                                 conformance_messages: list[dict[str, Any]]) -> None:
        """Output tokens are counted and never exceed max_tokens; input tokens are counted."""
        request = self._request(conformance_messages, max_tokens=4)
        result = started.generate(request)
        assert isinstance(result.output_tokens, int), "output_tokens must be the exact count"
        assert 0 <= result.output_tokens <= 4
        assert isinstance(result.input_tokens, int) and result.input_tokens > 0, "input_tokens must be counted"
        if result.cached_input_tokens is not None:
            assert 0 <= result.cached_input_tokens <= result.input_tokens

    def test_figures_are_honest(self, started: LLMBackend, conformance_messages: list[dict[str, Any]]) -> None:
        """Times and rates are non-negative or None (unknown), never made up; TTFT fits in the total."""
        result = started.generate(self._request(conformance_messages))
        for field in ("ttft_ms", "tps", "prefill_tps", "decode_tps", "queue_delay_ms", "total_ms", "vram_peak_mb"):
            value = getattr(result, field)
            assert value is None or (isinstance(value, (int, float)) and value >= 0), f"{field}={value!r}"
        if result.ttft_ms is not None and result.total_ms is not None:
            assert result.ttft_ms <= result.total_ms + 1e-6

    def test_finish_reason_uses_semconv_values(self, started: LLMBackend,
                                               conformance_messages: list[dict[str, Any]]) -> None:
        """finish_reason is a semantic-convention value (llama.cpp's limit becomes length)."""
        result = started.generate(self._request(conformance_messages, max_tokens=1))
        assert result.finish_reason is None or result.finish_reason in FINISH_REASONS
        if result.output_tokens == 1 and result.finish_reason is not None:
            assert result.finish_reason in {"length", "stop"}

    def test_request_id_round_trips(self, started: LLMBackend, conformance_messages: list[dict[str, Any]]) -> None:
        """A result carries its request's request_id, so callers and spans can correlate them."""
        request = self._request(conformance_messages, request_id="conformance-1")
        result = started.generate(request)
        assert result.request_id == "conformance-1"

    def test_context_overflow_is_the_core_error(self, started: LLMBackend, context_window: int | None,
                                                conformance_messages: list[dict[str, Any]]) -> None:
        """A prompt longer than the context window raises llamatelemetry.errors.ContextOverflowError (or a subclass).

        Callers catch that one class whatever the backend; the backend still serves the next request.
        """
        if context_window is None:
            pytest.skip("define a context_window fixture (the backend's context size in tokens) to run this check")
        # Twice as many words as the window has tokens: tokenizers give at least one token per spaced word.
        too_long = [{"role": "user", "content": " ".join(["overflow"] * (2 * context_window))}]
        with pytest.raises(ContextOverflowError):
            started.generate(self._request(too_long))
        assert isinstance(started.generate(self._request(conformance_messages)), InferenceResult)

    def test_shutdown_twice_is_harmless(self, backend: LLMBackend) -> None:
        """shutdown() may be called twice."""
        backend.start()
        backend.shutdown()
        backend.shutdown()

    def test_engine_records_a_genai_span(self, backend: LLMBackend,
                                         conformance_messages: list[dict[str, Any]]) -> None:
        """Through an engine, each request is a span carrying the GenAI attributes and the usage."""
        with InMemoryTelemetry() as telemetry, InferenceEngine(backend) as engine:
            result = engine.generate(self._request(conformance_messages))
            spans = [s for s in telemetry.spans() if (s.attributes or {}).get(gen_ai.GEN_AI_OPERATION_NAME) == "chat"]
            assert len(spans) == 1, [s.name for s in telemetry.spans()]
            attributes = spans[0].attributes or {}
            assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == engine.provider_name
            assert attributes.get(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS) == result.output_tokens
            points = telemetry.metric_points(gen_ai.GEN_AI_CLIENT_OPERATION_DURATION)
            assert points and points[0].value >= 1

    def test_engine_refuses_generate_before_start(self, backend: LLMBackend,
                                                  conformance_messages: list[dict[str, Any]]) -> None:
        """An engine that was not started raises a clear error instead of calling the backend."""
        engine = InferenceEngine(backend)
        with pytest.raises(BackendNotStartedError, match="start"):
            engine.generate(self._request(conformance_messages))
