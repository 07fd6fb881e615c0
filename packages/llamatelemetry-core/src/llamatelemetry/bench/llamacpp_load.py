"""Load on a llama.cpp server from one process: N concurrent streams (asyncio), or Poisson arrivals.

Only the core and the llama.cpp plugin are needed (``AsyncLlamaCppClient`` over httpx): no torch,
no tokenizer download. Per output chunk the harness takes one timestamp and reads the server's
cumulative ``predicted_n`` (llama.cpp's ``timings_per_token``), which says how many tokens the
chunk carried; everything else is computed after the response ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llamatelemetry.bench.config import BenchmarkConfig, LoadSpec, ProgressCallback, ProgressEvent, poisson_schedule
from llamatelemetry.bench.gpu_monitor import GPUMonitor
from llamatelemetry.bench.prompts import WARMUP_PROMPT, Prompt, plan_requests
from llamatelemetry.bench.records import RequestRecord, ServerFigures, TestResult, summarize
from llamatelemetry.bench.tracing import finish_request_span, request_span, test_span, trace_id_of

if TYPE_CHECKING:
    from llamatelemetry_llamacpp.client import AsyncLlamaCppClient

__all__ = ["LlamaCppLoad", "STREAMS_PER_CLIENT"]

log = logging.getLogger("llamatelemetry.bench")

#: httpx pools 100 connections per client; a stream holds one, so beyond this the harness opens another client.
STREAMS_PER_CLIENT = 64
#: The in-flight cap of an open-loop test given no max_concurrency (far above what one server serves).
_UNCAPPED_IN_FLIGHT = 256
_SLOTS_POLL_S = 0.05
_METRIC_FAMILIES = {
    "prompt_tokens": "llamacpp:prompt_tokens_total", "prompt_tokens_cached": "llamacpp:prompt_tokens_cached_total",
    "tokens_predicted": "llamacpp:tokens_predicted_total", "decode_calls": "llamacpp:n_decode_total",
    "prompt_seconds": "llamacpp:prompt_seconds_total", "predicted_seconds": "llamacpp:tokens_predicted_seconds_total",
}


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _carries_output(raw: Mapping[str, Any]) -> bool:
    """A chat chunk with reasoning or tool-call output but no text (text is checked first, for speed)."""
    choices = raw.get("choices")
    if not choices:
        return False
    delta = choices[0].get("delta")
    return bool(delta and (delta.get("reasoning_content") or delta.get("tool_calls")))


def _tokens_per_chunk(cumulative: Sequence[int | None]) -> tuple[int, ...] | None:
    if not cumulative or any(c is None for c in cumulative):
        return None
    counts: list[int] = []
    previous = 0
    for value in cumulative:
        assert value is not None
        counts.append(value - previous)
        previous = value
    return tuple(counts)


class LlamaCppLoad:
    """Runs a config's tests against one llama.cpp server; ``await load.run(...)`` returns the test results."""

    def __init__(self, config: BenchmarkConfig, prompts: Sequence[Prompt], *,
                 progress: ProgressCallback | None = None, gpu_monitor: GPUMonitor | None = None) -> None:
        from llamatelemetry.plugins.catalog import import_plugin_module

        import_plugin_module("llamacpp", "Benchmarking a llama.cpp server")
        self.config = config
        self.prompts = list(prompts)
        self.progress = progress
        self.gpu_monitor = gpu_monitor
        self.url = config.llama_server_url
        self.props: dict[str, Any] = {}
        #: The served model's id and llama.cpp's figures about it (``n_params``, ``n_ctx_train``, ...).
        self.model_id: str | None = None
        self.model_meta: dict[str, Any] = {}
        self._clients: list[AsyncLlamaCppClient] = []
        self._extra: dict[str, Any] = dict(config.extra_body)
        if config.tokens_per_chunk:
            self._extra["timings_per_token"] = True
        if config.ignore_eos:
            self._extra["ignore_eos"] = True

    # ------------------------------------------------------------------ set-up

    def _client(self) -> AsyncLlamaCppClient:
        from llamatelemetry_llamacpp.client import AsyncLlamaCppClient

        assert self.url is not None
        # retries=0: a resent request would hide a failure and distort its latency.
        return AsyncLlamaCppClient(self.url, api_key=self.config.api_key, timeout=self.config.timeout_s,
                                   retries=0)

    def _max_in_flight(self, specs: Sequence[LoadSpec]) -> int:
        return max((s.concurrency or _UNCAPPED_IN_FLIGHT) for s in specs)

    async def _connect(self, streams: int) -> None:
        from llamatelemetry_llamacpp.errors import LlamaCppError

        self._clients = [self._client() for _ in range(max(1, math.ceil(streams / STREAMS_PER_CLIENT)))]
        first = self._clients[0]
        await first.health()  # an unreachable or loading server fails here, with the client's clear message
        with contextlib.suppress(LlamaCppError):
            self.props = await first.props()
        with contextlib.suppress(LlamaCppError):
            models = await first.models()
            if models:
                self.model_id, self.model_meta = models[0].id, dict(models[0].meta)
        for client in self._clients:
            # Read once now, so no measured request pays for the span name's model lookup.
            with contextlib.suppress(LlamaCppError):
                await client.model_id()

    async def _close(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients = []

    # ------------------------------------------------------------------ one request

    async def _request(self, client: AsyncLlamaCppClient, test: str, index: int, prompt: Prompt, scheduled: float,
                       t0: float, warmup: bool) -> RequestRecord:
        config = self.config
        max_tokens = prompt.max_tokens or config.n_tokens
        seed = config.seed + index
        stamps: list[float] = []
        cumulative: list[int | None] = []
        error: BaseException | None = None
        stats = None
        with request_span(test, index, prompt.id, warmup) as span:
            sent = time.perf_counter()
            try:
                if config.operation == "chat":
                    stream = await client.chat.create(
                        messages=list(prompt.messages), max_tokens=max_tokens, temperature=config.temperature,
                        seed=seed, stream=True, cache_prompt=config.cache_prompt, **self._extra)
                else:
                    stream = await client.completion(
                        prompt.text, n_predict=max_tokens, temperature=config.temperature, seed=seed, stream=True,
                        cache_prompt=config.cache_prompt, **self._extra)
                async for chunk in stream:
                    # The hot path: one timestamp and one dict lookup per chunk, nothing else.
                    now = time.perf_counter()
                    raw = chunk.raw
                    if chunk.delta_text or _carries_output(raw):
                        stamps.append(now)
                        timings = raw.get("timings")
                        cumulative.append(timings.get("predicted_n") if timings else None)
                ended = time.perf_counter()
                stats = stream.stats
            except Exception as exc:
                ended = time.perf_counter()
                error = exc
            record = self._record(index, prompt, scheduled, sent - t0, sent, ended, stamps, cumulative, stats,
                                  error, trace_id_of(span))
            finish_request_span(span, record, error)
        return record

    @staticmethod
    def _record(index: int, prompt: Prompt, scheduled: float, sent_s: float, sent: float, ended: float,
                stamps: list[float], cumulative: list[int | None], stats: Any, error: BaseException | None,
                trace_id: str | None) -> RequestRecord:
        gaps = [(b - a) * 1e3 for a, b in itertools.pairwise(stamps)]
        common: dict[str, Any] = {
            "index": index, "prompt_id": prompt.id, "scheduled_s": scheduled, "sent_s": sent_s,
            "e2e_ms": (ended - sent) * 1e3, "ttft_ms": (stamps[0] - sent) * 1e3 if stamps else None,
            "gaps_ms": gaps, "chunks": len(stamps), "trace_id": trace_id,
        }
        if error is not None:
            text = str(error)
            return RequestRecord(ok=False, error_type=type(error).__name__,
                                 error_message=text[:300] + ("..." if len(text) > 300 else ""), **common)
        timings = stats.timings
        return RequestRecord(
            ok=True, tokens_per_chunk=_tokens_per_chunk(cumulative), input_tokens=stats.input_tokens,
            cached_input_tokens=stats.cached_input_tokens, output_tokens=stats.output_tokens,
            server_prompt_ms=timings.prompt_ms if timings else None,
            server_predicted_ms=timings.predicted_ms if timings else None,
            prefill_tps=timings.prompt_per_second if timings else None,
            decode_tps=timings.predicted_per_second if timings else None,
            finish_reason=stats.finish_reason, **common,
        )

    # ------------------------------------------------------------------ server figures

    async def _scrape(self) -> dict[str, float] | None:
        from llamatelemetry_llamacpp.errors import LlamaCppError
        from llamatelemetry_llamacpp.metrics_bridge import parse_prometheus_text

        try:
            text = await self._clients[0].metrics_text()
        except LlamaCppError:
            return None  # no --metrics on this server: the figures are optional
        families = parse_prometheus_text(text)
        values: dict[str, float] = {}
        for key, family_name in _METRIC_FAMILIES.items():
            family = families.get(family_name)
            if family is not None and family.samples:
                values[key] = sum(s.value for s in family.samples)
        return values

    async def _poll_slots(self, stop: asyncio.Event, seen: list[int]) -> None:
        from llamatelemetry_llamacpp.errors import LlamaCppError

        client = self._clients[0]
        while not stop.is_set():
            try:
                slots = await client.slots()
            except LlamaCppError:
                return  # /slots is switched off on this server
            seen.append(sum(1 for s in slots if s.get("is_processing")))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), _SLOTS_POLL_S)

    @staticmethod
    def _server_figures(before: dict[str, float] | None, after: dict[str, float] | None,
                        busy: list[int]) -> ServerFigures | None:
        if before is None or after is None:
            return ServerFigures(max_busy_slots=max(busy)) if busy else None
        delta = {k: round(after[k] - before[k], 6) for k in after if k in before}
        predicted, calls = delta.get("tokens_predicted"), delta.get("decode_calls")
        return ServerFigures(
            prompt_tokens=delta.get("prompt_tokens"), prompt_tokens_cached=delta.get("prompt_tokens_cached"),
            tokens_predicted=predicted, decode_calls=calls, prompt_seconds=delta.get("prompt_seconds"),
            predicted_seconds=delta.get("predicted_seconds"),
            busy_slots_per_decode=round(predicted / calls, 4) if predicted and calls else None,
            max_busy_slots=max(busy) if busy else None,
        )

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

        async def stream_worker(worker: int) -> None:
            nonlocal in_flight
            client = self._clients[worker % len(self._clients)]
            for index, prompt in work:  # a shared iterator: each stream takes the next request when free
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                in_flight += 1
                record = await self._request(client, spec.name, index, prompt, time.perf_counter() - t0, t0,
                                             warmup)
                in_flight -= 1
                records.append(record)
                on_done(record, in_flight)

        await asyncio.gather(*(stream_worker(w) for w in range(min(streams, len(plan)))))
        return records

    async def _open_loop(self, spec: LoadSpec, plan: Sequence[Prompt], t0: float, deadline: float | None,
                         on_done: Callable[[RequestRecord, int], None]) -> list[RequestRecord]:
        assert spec.request_rate is not None
        records: list[RequestRecord] = []
        cap = asyncio.Semaphore(spec.concurrency or _UNCAPPED_IN_FLIGHT)
        offsets = poisson_schedule(spec.request_rate, len(plan), self.config.seed)
        in_flight = 0

        async def arrival(index: int, prompt: Prompt, due: float) -> None:
            nonlocal in_flight
            async with cap:  # waiting here shows as schedule lag, not as server latency
                in_flight += 1
                client = self._clients[index % len(self._clients)]
                record = await self._request(client, spec.name, index, prompt, due, t0, False)
                in_flight -= 1
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
            before = await self._scrape()
            busy: list[int] = []
            stop_polling = asyncio.Event()
            poller = (asyncio.create_task(self._poll_slots(stop_polling, busy)) if config.poll_slots else None)
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
                stop_polling.set()
                if poller is not None:
                    await poller
            after = await self._scrape()
            self._notify(spec, position, total_tests, measured, num, 0, t0, finished=True)

        records = tuple(sorted(measured, key=lambda r: r.index))
        summary = summarize(records, warmup_requests=len(warm_records),
                            server=self._server_figures(before, after, busy), gpu=gpu)
        return TestResult(name=spec.name, mode=spec.mode, concurrency=spec.concurrency,
                          request_rate=spec.request_rate, started_at=started_at, requests=records, summary=summary)

    async def run(self, specs: Sequence[LoadSpec], before_tests: Callable[[], Awaitable[None]] | None = None,
                  ) -> list[TestResult]:
        """Connect, run every test in order, and close the connections."""
        await self._connect(self._max_in_flight(specs))
        try:
            if before_tests is not None:
                await before_tests()
            return [await self._test(spec, i, len(specs)) for i, spec in enumerate(specs)]
        finally:
            await self._close()
