"""A third-party integration that does not go through the engine, recorded by the core's request recorder."""

from __future__ import annotations

from typing import Any

import pytest

from llamatelemetry.inference import InferenceRequest, SamplingParams
from llamatelemetry.testing import InMemoryTelemetry

example = pytest.importorskip("llamatelemetry_example_backend",
                              reason="pip install -e examples/llamatelemetry-example-backend")


def test_a_direct_call_is_one_client_span_with_its_usage_and_metrics(llama_server: Any) -> None:
    from llamatelemetry_example_backend.direct import recorded_chat

    backend = example.OpenAICompatibleBackend(llama_server.base_url)
    backend.start()
    try:
        with InMemoryTelemetry() as telemetry:
            result = recorded_chat(backend, InferenceRequest(
                messages=[{"role": "user", "content": "Name a colour."}], max_tokens=5,
                sampling=SamplingParams(temperature=0.0)))
            (span,) = telemetry.spans()
            durations = telemetry.metric_points("gen_ai.client.operation.duration")
            tokens = telemetry.metric_points("gen_ai.client.token.usage")
    finally:
        backend.shutdown()
    assert span.kind.name == "CLIENT" and span.attributes["gen_ai.provider.name"] == "openai_compatible"
    assert span.attributes["gen_ai.usage.output_tokens"] == result.output_tokens == 5
    assert span.attributes["server.port"] == backend.server_port
    assert len(durations) == 1 and {p.attributes["gen_ai.token.type"] for p in tokens} == {"input", "output"}


def test_a_failing_direct_call_is_recorded_and_raised(llama_server: Any) -> None:
    from llamatelemetry_example_backend.direct import recorded_chat

    from llamatelemetry.errors import BackendNotStartedError

    backend = example.OpenAICompatibleBackend(llama_server.base_url)  # never started: generate() raises
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(BackendNotStartedError):
            recorded_chat(backend, InferenceRequest(messages=[{"role": "user", "content": "Hi"}]))
        (span,) = telemetry.spans()
        durations = telemetry.metric_points("gen_ai.client.operation.duration")
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "llamatelemetry.errors.BackendNotStartedError"
    assert durations[0].attributes["error.type"] == "llamatelemetry.errors.BackendNotStartedError"
