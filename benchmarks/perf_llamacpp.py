"""llama.cpp telemetry overhead: instrumented / bare time ratio (budget <= 1.02), printed as a table.

Three comparisons on the tiny generated model (and SmolLM2 for the server when installed):

1. in-process generation: ``LlamaCppBackend`` through an engine with telemetry on vs. the same
   backend with telemetry off;
2. a user's ``llama_cpp.Llama``: ``create_completion`` after ``instrument_llamacpp`` vs. before;
3. a server chat request: ``LlamaCppClient`` with telemetry on vs. the same request sent with plain
   httpx.

A second table gives the caller-side cost of telemetry per request in microseconds (budgets:
<= 150 us non-streamed, <= 200 us streamed with 16 chunks): the same ``LlamaCppClient`` request
with the client's recording on minus off, request by request, with an export path like a
deployment's (a batch span processor, a metric reader) less the network. Beside it, the SDK floor: the same spans,
attributes and histogram records made directly on the OpenTelemetry SDK after an unrecorded
request, which no library code can go under; the rest is llamatelemetry's own.

Bare and instrumented runs alternate so drift on a busy machine hits both; each ratio is the
median of per-pair ratios. Run with ``nox -s perf`` (after benchmarks/perf_core.py).
"""

from __future__ import annotations

import functools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUDGET = 1.02


def _nothing() -> None:
    return None


def paired_ratio(bare: Callable[[], Any], instrumented: Callable[[], Any], pairs: int, *,
                 before_bare: Callable[[], Any] = _nothing,
                 before_instrumented: Callable[[], Any] = _nothing) -> tuple[float, float, float]:
    """Median instrumented/bare ratio over alternating pairs, with the medians of each (seconds).

    ``before_*`` run untimed before each run (switching telemetry on or off).
    """
    before = {id(bare): before_bare, id(instrumented): before_instrumented}
    for _ in range(2):  # warm caches, allocators and the server's slot
        for fn in (bare, instrumented):
            before[id(fn)]()
            fn()
    ratios: list[float] = []
    bare_times: list[float] = []
    instrumented_times: list[float] = []
    for index in range(pairs):
        order = (bare, instrumented) if index % 2 == 0 else (instrumented, bare)
        measured: dict[int, float] = {}
        for fn in order:
            before[id(fn)]()
            start = time.perf_counter()
            fn()
            measured[id(fn)] = time.perf_counter() - start
        bare_times.append(measured[id(bare)])
        instrumented_times.append(measured[id(instrumented)])
        ratios.append(measured[id(instrumented)] / measured[id(bare)])
    return statistics.median(ratios), statistics.median(bare_times), statistics.median(instrumented_times)


def _telemetry(llamatelemetry: Any) -> Any:
    # Real SDK providers with no exporter: the ratios show the recording's cost, not an export path's.
    return llamatelemetry.init(service_name="perf-llamacpp", traces_exporter="none", metrics_exporter="none",
                               use_existing_providers=False, set_global_providers=False)


def in_process(model: Path, pairs: int, label: str) -> list[tuple[str, str]]:
    """Rows for the in-process backend and for an instrumented llama_cpp.Llama."""
    import llamatelemetry
    from llamatelemetry.inference import InferenceEngine, InferenceRequest, SamplingParams
    from llamatelemetry_llamacpp.backend import LlamaCppBackend
    from llamatelemetry_llamacpp.instrument import instrument_llamacpp, uninstrument_llamacpp

    request = InferenceRequest(messages=[{"role": "user", "content": "hello world"}], max_tokens=32,
                               sampling=SamplingParams(temperature=0.0, seed=1))
    rows: list[tuple[str, str]] = []
    backend = LlamaCppBackend(model, n_ctx=512, n_threads=1)
    with InferenceEngine(backend) as engine:
        def bare() -> Any:
            return engine.generate(request)

        def instrumented() -> Any:
            return engine.generate(request)

        ratio, b, i = paired_ratio(bare, instrumented, pairs, before_bare=llamatelemetry.shutdown,
                                   before_instrumented=lambda: llamatelemetry.current() or _telemetry(llamatelemetry))
        llamatelemetry.shutdown()
        rows.append((f"in-process LlamaCppBackend, 32 tokens ({label})",
                     f"{b * 1e3:8.2f} ms -> {i * 1e3:8.2f} ms  x{ratio:.3f}"))

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, n_threads=1, verbose=False)
    try:
        _telemetry(llamatelemetry)

        def plain() -> Any:
            return llm.create_completion("hello world", max_tokens=32, temperature=0.0)

        def patched() -> Any:
            return llm.create_completion("hello world", max_tokens=32, temperature=0.0)

        ratio2, b2, i2 = paired_ratio(plain, patched, pairs, before_bare=lambda: uninstrument_llamacpp(llm),
                                      before_instrumented=lambda: instrument_llamacpp(llm))
        uninstrument_llamacpp(llm)
        rows.append((f"llama_cpp.Llama.create_completion, 32 tokens ({label})",
                     f"{b2 * 1e3:8.2f} ms -> {i2 * 1e3:8.2f} ms  x{ratio2:.3f}"))
    finally:
        llamatelemetry.shutdown()
        llm.close()
    return rows


def server(model: Path, pairs: int, label: str) -> tuple[str, str]:
    """Row for one server chat request, client-instrumented vs plain httpx."""
    import httpx

    import llamatelemetry
    from llamatelemetry_llamacpp.client import LlamaCppClient
    from llamatelemetry_llamacpp.server import ServerManager

    body = {"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 16, "temperature": 0.0}
    with ServerManager() as manager:
        manager.start_server(model, gpu_layers=0, ctx_size=512, port=None, threads=1)
        plain_http = httpx.Client(base_url=manager.base_url, timeout=120)
        client = LlamaCppClient(manager.base_url, timeout=120)
        _telemetry(llamatelemetry)
        try:
            def plain() -> Any:
                return plain_http.post("/v1/chat/completions", json=body).json()

            def instrumented() -> Any:
                return client.chat.create(messages=body["messages"], max_tokens=16, temperature=0.0)

            ratio, b, i = paired_ratio(plain, instrumented, pairs)
        finally:
            llamatelemetry.shutdown()
            plain_http.close()
    return (f"server chat request, 16 tokens ({label})", f"{b * 1e3:8.2f} ms -> {i * 1e3:8.2f} ms  x{ratio:.3f}")


COST_BUDGETS_US = {"non-streamed": 150.0, "streamed, 16 chunks": 200.0}


class _Discard:
    """A span exporter that drops what it is given: the export path runs, the network is not measured."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _pipeline_telemetry(llamatelemetry: Any, *processors: Any) -> Any:
    """Telemetry like a deployment's, less the network: a batch span processor and a metric reader aggregating.

    The processor's schedule is set past the run (and its queue large), so no export interleaves
    with the timed requests and nothing is dropped; what each span's end costs the caller is there.
    """
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return llamatelemetry.init(
        service_name="perf-llamacpp", traces_exporter="none", metrics_exporter="none", use_existing_providers=False,
        set_global_providers=False, metric_readers=[InMemoryMetricReader()],
        span_processors=[BatchSpanProcessor(_Discard(), schedule_delay_millis=60_000, max_queue_size=1_000_000),
                         *processors])


class _Emitted:
    """What one recorded request gave the SDK, to replay directly on it (the floor no library code can go under)."""

    def __init__(self) -> None:
        #: (name, kind, attributes at start, attributes added by the end, index of the parent or -1), in start order.
        self.spans: list[tuple[str, Any, dict[str, Any], dict[str, Any], int]] = []
        self.chunks = 0

    def replay(self, telemetry: Any) -> None:
        """Start and end the same spans with the same attributes, and make the same histogram records."""
        from opentelemetry import trace

        from llamatelemetry.semconv import gen_ai

        tracer, metrics = telemetry.tracer, telemetry.metrics
        started: list[Any] = []
        for name, kind, start_attributes, _, parent in self.spans:
            context = trace.set_span_in_context(started[parent]) if parent >= 0 else None
            started.append(tracer.start_span(name, context=context, kind=kind, attributes=start_attributes))
        for span, (_, _, _, end_attributes, _) in reversed(list(zip(started, self.spans, strict=True))):
            span.set_attributes(end_attributes)
            span.end()
        final = {**self.spans[0][2], **self.spans[0][3]}
        labels = {key: final[key] for key in (gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GEN_AI_PROVIDER_NAME,
                                              gen_ai.GEN_AI_REQUEST_MODEL, gen_ai.SERVER_ADDRESS, gen_ai.SERVER_PORT,
                                              gen_ai.GEN_AI_RESPONSE_MODEL) if key in final}
        metrics.operation_duration.record(0.003, labels)
        for token_type in (gen_ai.TOKEN_TYPE_INPUT, gen_ai.TOKEN_TYPE_OUTPUT):
            metrics.token_usage.record(16, {**labels, gen_ai.GEN_AI_TOKEN_TYPE: token_type})
        if self.chunks:
            metrics.time_to_first_chunk.record(0.001, labels)
            for _ in range(self.chunks - 1):
                metrics.time_per_output_chunk.record(0.0001, labels)


def _capture(llamatelemetry: Any, call: Callable[[], Any], chunks: int) -> _Emitted:
    """Run ``call`` once recorded and note what it emitted (spans, attributes at start and at the end)."""
    from opentelemetry.sdk.trace import SpanProcessor

    emitted = _Emitted()
    emitted.chunks = chunks
    ids: dict[int, int] = {}

    class Capture(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            parent = span.parent.span_id if span.parent is not None else None
            ids[span.context.span_id] = len(emitted.spans)
            emitted.spans.append((span.name, span.kind, dict(span.attributes or {}), {},
                                  ids.get(parent, -1) if parent is not None else -1))

        def on_end(self, span: Any) -> None:
            index = ids[span.context.span_id]
            name, kind, start, _, parent = emitted.spans[index]
            end = {k: v for k, v in (span.attributes or {}).items() if start.get(k) != v}
            emitted.spans[index] = (name, kind, start, end, parent)

    _pipeline_telemetry(llamatelemetry, Capture())
    try:
        call()
    finally:
        llamatelemetry.shutdown()
    return emitted


def paired_cost(call: Callable[[], Any], replay: Callable[[], Any], pairs: int,
                switch: Callable[[bool], Any]) -> tuple[float, float, float]:
    """Medians over ``pairs`` rounds of (recorded - unrecorded, unrecorded + SDK floor - unrecorded, unrecorded).

    Each round runs the request three ways, in a rotating order so drift and caches hit all three
    alike: with the client's recording on, with it off, and with it off followed by the floor replay.
    Switching per request (``set_client_recording``) keeps telemetry initialized throughout, so no
    round pays a new provider's one-off costs. Seconds.
    """
    for on in (True, False) * 10:  # warm caches, allocators and the server's slot
        switch(on)
        call()

    def recorded() -> None:
        switch(True)
        call()

    def floor() -> None:
        switch(False)
        call()
        replay()

    def bare() -> None:
        switch(False)
        call()

    ways = (recorded, floor, bare)
    costs: list[float] = []
    floors: list[float] = []
    bares: list[float] = []
    for index in range(pairs):
        measured: dict[Callable[[], None], float] = {}
        for way in ways[index % 3:] + ways[:index % 3]:
            start = time.perf_counter()
            way()
            measured[way] = time.perf_counter() - start
        costs.append(measured[recorded] - measured[bare])
        floors.append(measured[floor] - measured[bare])
        bares.append(measured[bare])
    return statistics.median(costs), statistics.median(floors), statistics.median(bares)


def client_cost(model: Path, pairs: int) -> list[tuple[str, float, float, float]]:
    """(row, caller-side cost in us, SDK floor in us, bare request in ms) for a LlamaCppClient request."""
    import llamatelemetry
    from llamatelemetry_llamacpp.client import LlamaCppClient
    from llamatelemetry_llamacpp.server import ServerManager
    from llamatelemetry_llamacpp.telemetry import set_client_recording

    messages = [{"role": "user", "content": "hello world"}]
    rows: list[tuple[str, float, float, float]] = []
    with ServerManager() as manager:
        # One server thread: on a 2-core machine the caller then has a core of its own, as beside a real server.
        manager.start_server(model, gpu_layers=0, ctx_size=512, port=None, threads=1)
        client = LlamaCppClient(manager.base_url, timeout=120)
        try:
            def whole() -> Any:
                return client.chat.create(messages=messages, max_tokens=16, temperature=0.0)

            def streamed() -> Any:
                chunks = 0
                with client.chat.create(messages=messages, max_tokens=16, temperature=0.0, stream=True) as stream:
                    for chunk in stream:
                        chunks += bool(chunk.delta_text)
                return chunks

            chunks = streamed()
            if chunks != 16:  # the tiny model holds end-of-sequence down: 16 tokens give 16 chunks
                raise RuntimeError(f"the streamed request gave {chunks} chunks, not 16: the row would mislead")
            for label, call, count in (("non-streamed", whole, 0), ("streamed, 16 chunks", streamed, chunks)):
                emitted = _capture(llamatelemetry, call, count)
                telemetry = _pipeline_telemetry(llamatelemetry)
                try:
                    cost, floor, bare = paired_cost(call, functools.partial(emitted.replay, telemetry), pairs,
                                                    set_client_recording)
                finally:
                    set_client_recording(None)
                    llamatelemetry.shutdown()
                rows.append((f"LlamaCppClient chat, {label} (tiny)", cost * 1e6, floor * 1e6, bare * 1e3))
        finally:
            client.close()
    return rows


def main() -> int:
    """Measure and print the table."""
    from llamatelemetry_llamacpp.testing import smollm2_gguf_path, write_tiny_gguf

    print(f"llamatelemetry perf_llamacpp | Python {platform.python_version()} | {platform.platform()}")
    workdir = Path(tempfile.mkdtemp(prefix="perf-llamacpp-"))
    tiny = write_tiny_gguf(workdir / "tiny.gguf", seed=0)
    rows: list[tuple[str, str]] = []
    smol = smollm2_gguf_path()
    try:
        rows += in_process(tiny, pairs=30, label="tiny")
        if smol is not None:
            rows += in_process(smol, pairs=5, label="SmolLM2-135M")
    except ImportError as exc:
        rows.append(("in-process (llama-cpp-python)", f"n/a ({exc})"))
    rows.append(server(tiny, pairs=30, label="tiny"))
    if smol is not None:
        rows.append(server(smol, pairs=10, label="SmolLM2-135M"))
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'bare -> instrumented, median ratio':<44}  budget   verdict")
    # The tiny generated model decodes a token in ~0.1 ms, so a fixed per-request cost weighs far more
    # than on any real model; its rows show the fixed cost, the SmolLM2 rows the budget that matters.
    for name, value in rows:
        ratio = float(value.rsplit("x", 1)[1]) if " x" in value else None
        verdict = "n/a" if ratio is None else ("ok" if ratio <= BUDGET else "OVER")
        print(f"{name:<{width}}  {value:<44}  <= {BUDGET}  {verdict}")
    print()
    costs = client_cost(tiny, pairs=600)
    width = max(len(name) for name, _, _, _ in costs)
    print(f"{'caller-side cost per request':<{width}}  {'on - off':>8}  {'SDK floor':>9}  {'ours':>6}  "
          f"{'bare request':>12}  budget    verdict")
    for name, cost_us, floor_us, bare_ms in costs:
        budget = COST_BUDGETS_US[name.split(", ", 1)[1].removesuffix(" (tiny)")]
        verdict = "ok" if cost_us <= budget else "OVER"
        print(f"{name:<{width}}  {cost_us:5.0f} us  {floor_us:6.0f} us  {cost_us - floor_us:3.0f} us  "
              f"{bare_ms:9.2f} ms  <= {budget:.0f} us  {verdict}")
    print("(on - off: the same request with the client's recording on minus off, median of paired requests, "
          "with a batch span processor and a metric reader attached; SDK floor: the spans, attributes and "
          "histogram records that request emits, made directly on the OpenTelemetry SDK; ours: the difference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
