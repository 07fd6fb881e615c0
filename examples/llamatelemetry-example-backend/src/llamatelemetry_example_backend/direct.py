"""Recording calls that do not go through an engine: the request recorder in a few lines.

An application (or a client library) that already has its own way of calling a model describes
each call to ``llamatelemetry.inference.recording.start_generation`` and reports how it ended;
the core does the rest (span, request hooks, content capture and redaction, GenAI metrics).
"""

from __future__ import annotations

from llamatelemetry.inference import InferenceRequest, InferenceResult
from llamatelemetry.inference.recording import start_generation
from llamatelemetry_example_backend.backend import OpenAICompatibleBackend


def recorded_chat(backend: OpenAICompatibleBackend, request: InferenceRequest) -> InferenceResult:
    """Run ``request`` on a started backend, recorded as a GenAI span with metrics, without an engine."""
    with start_generation(request, provider=backend.provider_name, kind="client", model=backend.model_name,
                          server_address=backend.server_address, server_port=backend.server_port) as generation:
        result = backend.generate(request)  # any call: an HTTP request, a local model, a queue round trip
        generation.finish(result)
    return result
