"""The load itself, for any driver: warm-up, N concurrent streams or Poisson arrivals, spans, progress, records.

Everything here runs on one asyncio event loop in this process. The driver sends each request
and times its chunks; this module decides when each request goes out, on which slot, under
which span, and turns what the driver measured into ``RequestRecord``s and a ``TestResult``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from llamatelemetry.bench.config import BenchmarkConfig, LoadSpec, ProgressCallback, ProgressEvent, poisson_schedule
from llamatelemetry.bench.drivers import LoadDriver, LoadDriverError, LoadRequest, RequestOutcome
from llamatelemetry.bench.gpu_monitor import GPUMonitor
from llamatelemetry.bench.prompts import WARMUP_PROMPT, Prompt, plan_requests
from llamatelemetry.bench.records import RequestRecord, TestResult, summarize
from llamatelemetry.bench.tracing import finish_request_span, request_span, test_span, trace_id_of

__all__ = ["LoadRunner"]

log = logging.getLogger("llamatelemetry.bench")

#: How much of a failure's message goes into its record.
_MAX_ERROR_CHARS = 300


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _record(request: LoadRequest, scheduled: float, t0: float, outcome: RequestOutcome,
            trace_id: str | None) -> RequestRecord:
    stamps = outcome.chunk_times
    sent = outcome.sent
    ttft = (stamps[0] - sent) * 1e3 if stamps else outcome.ttft_ms
    common: dict[str, Any] = {
        "index": request.index, "prompt_id": request.prompt.id, "scheduled_s": scheduled, "sent_s": sent - t0,
        "e2e_ms": (outcome.ended - sent) * 1e3, "ttft_ms": ttft,
        "gaps_ms": [(b - a) * 1e3 for a, b in itertools.pairwise(stamps)], "chunks": len(stamps),
        "trace_id": trace_id,
    }
    error = outcome.error
    if error is not None:
        text = str(error)
        suffix = "..." if len(text) > _MAX_ERROR_CHARS else ""
        return RequestRecord(ok=False, error_type=type(error).__name__, error_message=text[:_MAX_ERROR_CHARS] + suffix,
                             **common)
    return RequestRecord(
        ok=True, tokens_per_chunk=outcome.tokens_per_chunk, input_tokens=outcome.input_tokens,
        cached_input_tokens=outcome.cached_input_tokens, output_tokens=outcome.output_tokens,
        server_prompt_ms=outcome.server_prompt_ms, server_predicted_ms=outcome.server_predicted_ms,
        prefill_tps=outcome.prefill_tps, decode_tps=outcome.decode_tps, finish_reason=outcome.finish_reason,
        **common)


class LoadRunner:
    """Runs a config's tests through a started driver; ``await runner.run(specs)`` returns the test results."""

    def __init__(self, config: BenchmarkConfig, prompts: Sequence[Prompt], driver: LoadDriver, *,
                 progress: ProgressCallback | None = None, gpu_monitor: GPUMonitor | None = None) -> None:
        self.config = config
        self.prompts = list(prompts)
        self.driver = driver
        self.progress = progress
        self.gpu_monitor = gpu_monitor
        #: How many requests the driver serves at once (``start``'s answer).
        self.served = 1

    @staticmethod
    def max_in_flight(specs: Sequence[LoadSpec]) -> int | None:
        """The most requests the tests keep in flight at once (``None``: an open-loop test has no cap)."""
        if any(s.concurrency is None for s in specs):
            return None
        return max(s.concurrency or 1 for s in specs)

    async def start(self, specs: Sequence[LoadSpec]) -> None:
        """Start the driver for these tests and check it serves the concurrency they ask for."""
        wanted = self.max_in_flight(specs)
        served = await self.driver.start(wanted)
        if not isinstance(served, int) or served < 1 or (wanted is not None and served < wanted):
            raise LoadDriverError(f"The load driver {type(self.driver).__name__} serves {served!r} requests at once, "
                                  f"but the tests ask for {wanted}: lower the concurrency.")
        self.served = served

    # ------------------------------------------------------------------ one request

    async def _request(self, test: str, request: LoadRequest, scheduled: float, t0: float) -> RequestRecord:
        with request_span(test, request.index, request.prompt.id, request.warmup) as span:
            try:
                outcome = await self.driver.send(request)
            except Exception as exc:  # a driver that raises instead of reporting: still one failed request
                now = time.perf_counter()
                outcome = RequestOutcome(sent=now, ended=now, error=exc)
            record = _record(request, scheduled, t0, outcome, trace_id_of(span))
            finish_request_span(span, record, outcome.error)
        return record

    def _load_request(self, index: int, prompt: Prompt, slot: int, warmup: bool) -> LoadRequest:
        return LoadRequest(index=index, prompt=prompt, max_tokens=prompt.max_tokens or self.config.n_tokens,
                           seed=self.config.seed + index, slot=slot, warmup=warmup)

    # ------------------------------------------------------------------ load shapes

    def _notify(self, spec: LoadSpec, position: int, total_tests: int, records: list[RequestRecord], total: int,
                in_flight: int, t0: float, *, warmup: bool = False, finished: bool = False) -> None:
        if self.progress is None:
            return
        self.progress(ProgressEvent(
            test=spec.name, test_index=position, tests=total_tests, done=len(records),
            failed=sum(1 for r in records if not r.ok), total=total, in_flight=in_flight,
            elapsed_s=time.perf_counter() - t0, warmup=warmup, finished=finished))

    async def _closed_loop(self, spec: LoadSpec, plan: Sequence[Prompt], streams: int, t0: float,
                           deadline: float | None, warmup: bool,
                           on_done: Callable[[RequestRecord, int], None]) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        work = iter(enumerate(plan))
        in_flight = 0

        async def stream_worker(slot: int) -> None:
            nonlocal in_flight
            for index, prompt in work:  # a shared iterator: each stream takes the next request when free
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                in_flight += 1
                record = await self._request(spec.name, self._load_request(index, prompt, slot, warmup),
                                             time.perf_counter() - t0, t0)
                in_flight -= 1
                records.append(record)
                on_done(record, in_flight)

        await asyncio.gather(*(stream_worker(slot) for slot in range(min(streams, len(plan)))))
        return records

    async def _open_loop(self, spec: LoadSpec, plan: Sequence[Prompt], t0: float, deadline: float | None,
                         on_done: Callable[[RequestRecord, int], None]) -> list[RequestRecord]:
        assert spec.request_rate is not None
        records: list[RequestRecord] = []
        cap = min(spec.concurrency or self.served, self.served)
        free_slots = list(range(cap - 1, -1, -1))
        gate = asyncio.Semaphore(cap)
        offsets = poisson_schedule(spec.request_rate, len(plan), self.config.seed)
        in_flight = 0

        async def arrival(index: int, prompt: Prompt, due: float) -> None:
            nonlocal in_flight
            async with gate:  # waiting here shows as schedule lag, not as server latency
                slot = free_slots.pop()
                in_flight += 1
                try:
                    record = await self._request(spec.name, self._load_request(index, prompt, slot, False), due, t0)
                finally:
                    in_flight -= 1
                    free_slots.append(slot)
            records.append(record)
            on_done(record, in_flight)

        tasks: list[asyncio.Task[None]] = []
        for index, (prompt, due) in enumerate(zip(plan, offsets, strict=True)):
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if deadline is not None and time.perf_counter() >= deadline:
                break
            tasks.append(asyncio.create_task(arrival(index, prompt, due)))
        await asyncio.gather(*tasks)
        return records

    # ------------------------------------------------------------------ a test

    async def _test(self, spec: LoadSpec, position: int, total_tests: int) -> TestResult:
        config = self.config
        num = config.num_requests or len(self.prompts)
        plan = plan_requests(self.prompts, num, config.seed)
        streams = spec.concurrency or 1
        warmups = config.warmup if config.warmup is not None else streams
        started_at = _now_iso()

        with test_span(spec, num):
            t_warm = time.perf_counter()
            warm_records: list[RequestRecord] = []
            if warmups:
                # At the test's concurrency, so every slot the test uses has run once before measuring.
                warm = await self._closed_loop(
                    spec, [WARMUP_PROMPT] * warmups, min(streams, warmups), t_warm, None, True,
                    lambda r, n: self._notify(spec, position, total_tests, warm_records, warmups, n, t_warm,
                                              warmup=True))
                warm_records.extend(warm)
                failed = [r for r in warm if not r.ok]
                if failed and len(failed) == len(warm):
                    log.warning("every warm-up request failed (%s: %s); measuring anyway", failed[0].error_type,
                                failed[0].error_message)
            await self.driver.test_started()
            if self.gpu_monitor is not None:
                self.gpu_monitor.start()
            t0 = time.perf_counter()
            deadline = t0 + config.max_duration_s if config.max_duration_s else None
            measured: list[RequestRecord] = []

            def on_done(record: RequestRecord, in_flight: int) -> None:
                measured.append(record)
                self._notify(spec, position, total_tests, measured, num, in_flight, t0)

            try:
                if spec.mode == "rate":
                    await self._open_loop(spec, plan, t0, deadline, on_done)
                else:
                    await self._closed_loop(spec, plan, streams, t0, deadline, False, on_done)
            finally:
                gpu = self.gpu_monitor.stop() if self.gpu_monitor is not None else None
                server = await self.driver.test_finished()
            self._notify(spec, position, total_tests, measured, num, 0, t0, finished=True)

        records = tuple(sorted(measured, key=lambda r: r.index))
        summary = summarize(records, warmup_requests=len(warm_records), server=server, gpu=gpu)
        return TestResult(name=spec.name, mode=spec.mode, concurrency=spec.concurrency,
                          request_rate=spec.request_rate, started_at=started_at, requests=records, summary=summary)

    async def run(self, specs: Sequence[LoadSpec]) -> list[TestResult]:
        """Run every test in order (``start`` first)."""
        return [await self._test(spec, i, len(specs)) for i, spec in enumerate(specs)]
