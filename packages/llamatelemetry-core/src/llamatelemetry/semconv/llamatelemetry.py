"""Names under the ``llamatelemetry.*`` namespace: facts that have no standard OTel name yet.

Every name here is listed, with its type and unit, in the telemetry reference of the docs.
Standard names (``gen_ai.*``, ``hw.*``) are always preferred when one exists.
"""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "llamatelemetry"

# ---- request / response (span attributes)
REQUEST_ID: Final = "llamatelemetry.request.id"
#: Seconds the request waited before the backend started on it.
REQUEST_QUEUE_DELAY: Final = "llamatelemetry.request.queue_delay"
REQUEST_REPEAT_PENALTY: Final = "llamatelemetry.request.repeat_penalty"
#: Seconds from the request start to the first generated token, measured by the backend itself.
RESPONSE_TIME_TO_FIRST_TOKEN: Final = "llamatelemetry.response.time_to_first_token"
#: Output tokens per second over the whole request.
RESPONSE_TOKENS_PER_SECOND: Final = "llamatelemetry.response.tokens_per_second"
#: Output tokens per second after the first token (the decode phase).
RESPONSE_DECODE_TOKENS_PER_SECOND: Final = "llamatelemetry.response.decode_tokens_per_second"
#: Prompt tokens per second in the prefill phase.
RESPONSE_PREFILL_TOKENS_PER_SECOND: Final = "llamatelemetry.response.prefill_tokens_per_second"
#: Peak GPU memory of the request, bytes. Absent when it cannot be known.
RESPONSE_VRAM_PEAK: Final = "llamatelemetry.response.vram_peak"

# ---- model loading, shared by every in-process backend (llama.cpp, transformers)
MODEL_PATH: Final = "llamatelemetry.model.path"
MODEL_PARAMETERS: Final = "llamatelemetry.model.parameters"
MODEL_VOCAB_SIZE: Final = "llamatelemetry.model.vocab_size"
MODEL_TRAINED_CONTEXT: Final = "llamatelemetry.model.trained_context"
#: Seconds the model took to load.
MODEL_LOAD_DURATION: Final = "llamatelemetry.model.load.duration"

# ---- generation phases (attributes of prefill/decode child spans), shared by in-process backends
#: Which phase a span covers: ``prefill`` or ``decode``.
PHASE: Final = "llamatelemetry.phase.name"
PHASE_PREFILL: Final = "prefill"
PHASE_DECODE: Final = "decode"
#: Prefill: prompt tokens processed. Decode: tokens generated after the first one.
PHASE_TOKENS: Final = "llamatelemetry.phase.tokens"
PHASE_TOKENS_PER_SECOND: Final = "llamatelemetry.phase.tokens_per_second"

# ---- streaming (span attributes)
STREAM_CHUNKS: Final = "llamatelemetry.stream.chunks"
#: True when the consumer stopped iterating before the stream was exhausted.
STREAM_CLOSED_EARLY: Final = "llamatelemetry.stream.closed_early"

# ---- decorators (span attributes)
#: "workflow", "task" or "function": what kind of user code the span covers.
SPAN_KIND: Final = "llamatelemetry.span.kind"
WORKFLOW_NAME: Final = "llamatelemetry.workflow.name"
CODE_FUNCTION_NAME: Final = "code.function.name"

# ---- the telemetry pipeline itself (metrics)
TELEMETRY_SPANS_EXPORTED: Final = "llamatelemetry.telemetry.spans.exported"
TELEMETRY_SPANS_DROPPED: Final = "llamatelemetry.telemetry.spans.dropped"
TELEMETRY_EXPORT_FAILURES: Final = "llamatelemetry.telemetry.export.failures"

# ---- benchmark harness (span attributes of `benchmark {test}` and `benchmark request` spans)
#: The test (load level) a span belongs to: "concurrency=4", "rate=2/s".
BENCH_TEST: Final = "llamatelemetry.bench.test"
#: "concurrency" (closed loop), "rate" (open loop, Poisson arrivals) or "sequential" (in-process backends).
BENCH_MODE: Final = "llamatelemetry.bench.mode"
BENCH_CONCURRENCY: Final = "llamatelemetry.bench.concurrency"
#: Poisson arrival rate of an open-loop test, requests per second.
BENCH_REQUEST_RATE: Final = "llamatelemetry.bench.request_rate"
BENCH_NUM_REQUESTS: Final = "llamatelemetry.bench.num_requests"
BENCH_REQUEST_INDEX: Final = "llamatelemetry.bench.request.index"
BENCH_PROMPT_ID: Final = "llamatelemetry.bench.prompt.id"
#: True on warm-up requests, which the report leaves out of every figure.
BENCH_WARMUP: Final = "llamatelemetry.bench.warmup"
#: Seconds the request was sent after it was due.
BENCH_SCHEDULE_LAG: Final = "llamatelemetry.bench.schedule_lag"
#: Longest gap between two output chunks of the request, seconds (a stall).
BENCH_INTER_CHUNK_GAP_MAX: Final = "llamatelemetry.bench.inter_chunk_gap.max"
#: Most tokens one output chunk carried.
BENCH_TOKENS_PER_CHUNK_MAX: Final = "llamatelemetry.bench.tokens_per_chunk.max"

# ---- the export path (metrics about telemetry delivery itself)
#: Items (spans, metric data points) the export path dropped; attributes ``signal`` and ``reason``.
EXPORT_DROPPED: Final = "llamatelemetry.export.dropped"
