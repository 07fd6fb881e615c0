"""The GenAI metric instruments with the bucket boundaries of the semantic conventions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from llamatelemetry.semconv import gen_ai

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter

__all__ = [
    "DURATION_BUCKETS",
    "TOKEN_USAGE_BUCKETS",
    "SERVER_TTFT_BUCKETS",
    "SERVER_TPOT_BUCKETS",
    "GenAIMetrics",
]

#: 0.01 s doubling to 81.92 s (gen_ai.client.operation.duration and the other client timings).
DURATION_BUCKETS: Final = tuple(round(0.01 * 2**i, 2) for i in range(14))
#: 1 to 67,108,864 tokens in steps of x4 (gen_ai.client.token.usage).
TOKEN_USAGE_BUCKETS: Final = tuple(4**i for i in range(14))
SERVER_TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
SERVER_TPOT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


@attrs.frozen
class GenAIMetrics:
    """The standard GenAI histograms, created once per meter.

    Record with the attributes the conventions allow on metrics (operation, provider, request
    and response model, server address/port, ``error.type``; ``gen_ai.token.type`` on token
    usage), never with per-request ids.
    """

    operation_duration: Histogram
    token_usage: Histogram
    time_to_first_chunk: Histogram
    time_per_output_chunk: Histogram
    server_request_duration: Histogram
    server_time_to_first_token: Histogram
    server_time_per_output_token: Histogram

    @classmethod
    def create(cls, meter: Meter) -> GenAIMetrics:
        """Create the instruments on ``meter`` with the advisory bucket boundaries."""

        def histogram(name: str, unit: str, description: str, buckets: tuple[float, ...]) -> Histogram:
            return meter.create_histogram(
                name, unit=unit, description=description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        return cls(
            operation_duration=histogram(
                gen_ai.GEN_AI_CLIENT_OPERATION_DURATION, "s", "GenAI operation duration.", DURATION_BUCKETS),
            token_usage=histogram(
                gen_ai.GEN_AI_CLIENT_TOKEN_USAGE, "{token}", "Number of input and output tokens used.",
                TOKEN_USAGE_BUCKETS),
            time_to_first_chunk=histogram(
                gen_ai.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "s",
                "Time from the request start to the first chunk received in a streaming response.",
                DURATION_BUCKETS),
            time_per_output_chunk=histogram(
                gen_ai.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK, "s",
                "Time between consecutive chunks of a streaming response, after the first.",
                DURATION_BUCKETS),
            server_request_duration=histogram(
                gen_ai.GEN_AI_SERVER_REQUEST_DURATION, "s", "Generative AI server request duration.",
                DURATION_BUCKETS),
            server_time_to_first_token=histogram(
                gen_ai.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "s",
                "Time to generate the first token, as reported by the server.", SERVER_TTFT_BUCKETS),
            server_time_per_output_token=histogram(
                gen_ai.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, "s",
                "Time per output token after the first, as reported by the server.", SERVER_TPOT_BUCKETS),
        )
