"""Load through any registered backend (``create_engine``): one request at a time, in this process's thread.

In-process backends (llama-cpp-python, transformers) own the CPU or GPU while they generate, so
requests run sequentially. Each request is an ``InferenceEngine`` span under the harness's request
span; the figures come from the backend's ``InferenceResult`` (its own TTFT, prefill and decode
speeds) beside the harness's end-to-end clock. Without a stream there are no inter-chunk gaps.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llamatelemetry.bench.config import BenchmarkConfig, LoadSpec, ProgressCallback, ProgressEvent
from llamatelemetry.bench.gpu_monitor import GPUMonitor
from llamatelemetry.bench.prompts import WARMUP_PROMPT, Prompt, plan_requests
from llamatelemetry.bench.records import RequestRecord, TestResult, summarize
from llamatelemetry.bench.tracing import finish_request_span, request_span, test_span, trace_id_of

if TYPE_CHECKING:
    from llamatelemetry.inference.engine import InferenceEngine

__all__ = ["EngineLoad"]


class EngineLoad:
    """Runs a config's tests sequentially on a started ``InferenceEngine``."""

    def __init__(self, config: BenchmarkConfig, prompts: Sequence[Prompt], engine: InferenceEngine, *,
                 progress: ProgressCallback | None = None, gpu_monitor: GPUMonitor | None = None) -> None:
        self.config = config
        self.prompts = list(prompts)
        self.engine = engine
        self.progress = progress
        self.gpu_monitor = gpu_monitor

    def _request(self, test: str, index: int, prompt: Prompt, t0: float, warmup: bool) -> RequestRecord:
        from llamatelemetry.inference.base import InferenceRequest
        from llamatelemetry.inference.types import SamplingParams

        config = self.config
        request = InferenceRequest(
            messages=[dict(m) for m in prompt.messages], max_tokens=prompt.max_tokens or config.n_tokens,
            sampling=SamplingParams(temperature=config.temperature, seed=config.seed + index),
            operation=config.operation,
        )
        with request_span(test, index, prompt.id, warmup) as span:
            sent = time.perf_counter()
            error: BaseException | None = None
            try:
                result = self.engine.generate(request)
            except Exception as exc:
                error = exc
            ended = time.perf_counter()
            common: dict[str, Any] = {"index": index, "prompt_id": prompt.id, "scheduled_s": sent - t0,
                                      "sent_s": sent - t0, "e2e_ms": (ended - sent) * 1e3,
                                      "trace_id": trace_id_of(span)}
            if error is not None:
                text = str(error)
                record = RequestRecord(ok=False, error_type=type(error).__name__, error_message=text[:300], **common)
            else:
                attributes = dict(result.attributes or {})
                record = RequestRecord(
                    ok=True, ttft_ms=result.ttft_ms, input_tokens=result.input_tokens,
                    cached_input_tokens=result.cached_input_tokens, output_tokens=result.output_tokens,
                    prefill_tps=result.prefill_tps, decode_tps=result.decode_tps, finish_reason=result.finish_reason,
                    server_prompt_ms=_float(attributes.get("llamatelemetry.llama_cpp.timings.prompt_ms")),
                    server_predicted_ms=_float(attributes.get("llamatelemetry.llama_cpp.timings.predicted_ms")),
                    **common)
            finish_request_span(span, record, error)
        return record

    def _test(self, spec: LoadSpec, position: int, total_tests: int) -> TestResult:
        config = self.config
        num = config.num_requests or len(self.prompts)
        plan = plan_requests(self.prompts, num, config.seed)
        warmups = config.warmup if config.warmup is not None else 1
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        records: list[RequestRecord] = []
        with test_span(spec, num):
            t_warm = time.perf_counter()
            for index in range(warmups):
                self._request(spec.name, index, WARMUP_PROMPT, t_warm, True)
            if self.gpu_monitor is not None:
                self.gpu_monitor.start()
            t0 = time.perf_counter()
            deadline = t0 + config.max_duration_s if config.max_duration_s else None
            try:
                for index, prompt in enumerate(plan):
                    if deadline is not None and time.perf_counter() >= deadline:
                        break
                    records.append(self._request(spec.name, index, prompt, t0, False))
                    if self.progress is not None:
                        self.progress(ProgressEvent(
                            test=spec.name, test_index=position, tests=total_tests, done=len(records),
                            failed=sum(1 for r in records if not r.ok), total=num, in_flight=0,
                            elapsed_s=time.perf_counter() - t0))
            finally:
                gpu = self.gpu_monitor.stop() if self.gpu_monitor is not None else None
        summary = summarize(records, warmup_requests=warmups, gpu=gpu)
        return TestResult(name=spec.name, mode="sequential", concurrency=1, request_rate=None, started_at=started_at,
                          requests=tuple(records), summary=summary)

    def run(self, specs: Sequence[LoadSpec]) -> list[TestResult]:
        """Run every test in order (the engine must be started)."""
        return [self._test(spec, i, len(specs)) for i, spec in enumerate(specs)]


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
