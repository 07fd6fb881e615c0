"""The in-process backends (llama.cpp through llama-cpp-python, transformers) under concurrent generate().

Several threads share one engine: every request gets its own result and exactly one span carrying
its own request id and token counts, and the texts equal a serial run's (greedy decoding), so no
output is cross-wired. ``shutdown()`` while a generation runs: that generation finishes, shutdown
returns, and a request that could not run gets ``BackendNotStartedError``, never a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from llamatelemetry.errors import BackendNotStartedError
from llamatelemetry.inference import InferenceEngine, InferenceRequest, InferenceResult, SamplingParams
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.llamatelemetry import REQUEST_ID
from llamatelemetry.testing import InMemoryTelemetry

pytestmark = pytest.mark.timeout(240)

THREADS = 4
PER_THREAD = 2


class _Ended(SpanProcessor):
    """Sets ``event`` once a span named ``name`` has ended (the generation is then mid-way)."""

    def __init__(self, name: str, event: threading.Event) -> None:
        self.name = name
        self.event = event

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == self.name:
            self.event.set()


def _llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, MidGeneration]:
    pytest.importorskip("llama_cpp", reason='pip install "llamatelemetry-llamacpp[engine]"')
    from llamatelemetry_llamacpp import semconv as names
    from llamatelemetry_llamacpp.backend import LlamaCppBackend
    from llamatelemetry_llamacpp.testing import write_tiny_gguf

    model = write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0)
    backend = LlamaCppBackend(model, n_ctx=512, n_threads=1)

    def mid_generation(telemetry: Any, event: threading.Event) -> None:
        # The prefill child span ends before decoding starts: from then on the generation holds the model.
        telemetry.telemetry.tracer_provider.add_span_processor(_Ended(names.SPAN_PREFILL, event))

    return backend, mid_generation


def _transformers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, MidGeneration]:
    torch = pytest.importorskip("torch", reason='pip install "llamatelemetry-transformers[engine]"')
    pytest.importorskip("transformers", reason='pip install "llamatelemetry-transformers[engine]"')
    from llamatelemetry_transformers.backend import TransformersBackend
    from llamatelemetry_transformers.testing import write_tiny_model

    torch.set_num_threads(1)
    folder = write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama", seed=0,
                              eos_reachable=False)
    backend = TransformersBackend(folder, device="cpu")

    def mid_generation(telemetry: Any, event: threading.Event) -> None:
        # The model's first forward pass (prefill) runs inside generate(), under the backend's lock.
        backend._loaded.model.register_forward_hook(lambda *args: event.set())

    return backend, mid_generation


MidGeneration = Callable[[Any, threading.Event], None]


@pytest.fixture(params=["llama.cpp", "transformers"])
def backend_kind(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, MidGeneration]]:
    """A fresh in-process backend (not started) and how to learn that one of its generations is mid-way."""
    make = _llama_cpp if request.param == "llama.cpp" else _transformers
    backend, mid_generation = make(tmp_path_factory)
    try:
        yield backend, mid_generation
    finally:
        backend.shutdown()


def _request(thread: int, index: int, max_tokens: int | None = None) -> InferenceRequest:
    return InferenceRequest(messages=[{"role": "user", "content": f"story {index} for reader {thread}"}],
                            max_tokens=max_tokens or 3 + thread + index, request_id=f"t{thread}-r{index}",
                            sampling=SamplingParams(temperature=0.0, repeat_penalty=1.0))


def test_concurrent_generate_keeps_every_request_apart(backend_kind: tuple[Any, Any]) -> None:
    backend, _ = backend_kind
    requests = [_request(t, i) for t in range(THREADS) for i in range(PER_THREAD)]
    with InMemoryTelemetry() as telemetry, InferenceEngine(backend) as engine:
        serial = {r.request_id: engine.generate(r).text for r in requests}
        telemetry.clear()

        def work(thread: int) -> list[tuple[InferenceRequest, InferenceResult]]:
            return [(r, engine.generate(r)) for r in requests if r.request_id.startswith(f"t{thread}-")]

        with ThreadPoolExecutor(THREADS) as pool:
            outcomes = [pair for done in pool.map(work, range(THREADS)) for pair in done]
        spans = [s for s in telemetry.spans() if s.attributes.get(REQUEST_ID)]

    assert len(outcomes) == len(requests)
    for request, result in outcomes:
        assert result.request_id == request.request_id
        assert result.output_tokens == request.max_tokens, (request.request_id, result.output_tokens)
        assert result.text == serial[request.request_id], "greedy output equals the serial run's"
    by_id = {s.attributes[REQUEST_ID]: s for s in spans}
    assert len(spans) == len(by_id) == len(requests), "one span per request, none lost or doubled"
    for request in requests:
        span = by_id[request.request_id]
        assert span.status.status_code.name != "ERROR"
        assert span.attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == request.max_tokens


def test_shutdown_while_a_generation_runs(backend_kind: tuple[Any, Any]) -> None:
    backend, mid_generation = backend_kind
    long_request = _request(0, 0, max_tokens=64)
    queued = [_request(1 + t, 0) for t in range(THREADS - 1)]
    running = threading.Event()
    with InMemoryTelemetry() as telemetry:
        engine = InferenceEngine(backend).start()
        mid_generation(telemetry, running)
        outcomes: dict[str, InferenceResult | BaseException] = {}

        def run(request: InferenceRequest) -> None:
            try:
                outcomes[request.request_id] = engine.generate(request)
            except BaseException as exc:  # recorded and checked below
                outcomes[request.request_id] = exc

        first = threading.Thread(target=run, args=(long_request,))
        first.start()
        assert running.wait(60), "the first generation never started"
        others = [threading.Thread(target=run, args=(r,)) for r in queued]
        for thread in others:
            thread.start()
        engine.shutdown()  # waits for the running generation, then the model is gone
        for thread in [first, *others]:
            thread.join(60)
            assert not thread.is_alive(), "a request hangs after shutdown()"
        assert not backend.started
        with pytest.raises(BackendNotStartedError):
            engine.generate(_request(9, 9))
        spans = {s.attributes.get(REQUEST_ID): s for s in telemetry.spans() if s.attributes.get(REQUEST_ID)}

    result = outcomes[long_request.request_id]
    assert isinstance(result, InferenceResult), result
    assert result.output_tokens == 64, "the generation that was running finished whole"
    for request in queued:
        outcome = outcomes[request.request_id]
        if isinstance(outcome, InferenceResult):  # it ran before shutdown took the model
            assert outcome.request_id == request.request_id and outcome.output_tokens == request.max_tokens
        else:
            assert isinstance(outcome, BackendNotStartedError), repr(outcome)
            assert "start()" in str(outcome)
            span = spans[request.request_id]
            assert span.status.status_code.name == "ERROR"
            assert span.attributes[gen_ai.ERROR_TYPE].endswith("BackendNotStartedError")


def test_telemetry_shutdown_while_a_generation_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """llamatelemetry.shutdown() mid-generation: the generation finishes whole, later ones run, nothing crashes.

    The spans that end after the shutdown cannot be exported: they are counted as undelivered (shutdown
    came first), not as dropped for a full queue, which would send a user looking for a slow exporter.
    """
    import llamatelemetry

    backend, mid_generation = _llama_cpp(tmp_path_factory)
    running = threading.Event()
    telemetry = llamatelemetry.init(service_name="shutdown-mid-generation", traces_exporter="file",
                                    output_file=str(tmp_path_factory.mktemp("out") / "spans.jsonl"),
                                    metrics_exporter="none", use_existing_providers=False,
                                    set_global_providers=False)
    outcome: list[InferenceResult | BaseException] = []
    with InferenceEngine(backend) as engine:
        mid_generation(type("Handle", (), {"telemetry": telemetry})(), running)

        def run() -> None:
            try:
                outcome.append(engine.generate(_request(0, 0, max_tokens=64)))
            except BaseException as exc:  # checked below
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert running.wait(60), "the generation never started"
        llamatelemetry.shutdown()
        thread.join(60)
        assert not thread.is_alive()
        after = engine.generate(_request(1, 0))  # telemetry is off now; generation still works
    (result,) = outcome
    assert isinstance(result, InferenceResult) and result.output_tokens == 64, result
    assert after.output_tokens == _request(1, 0).max_tokens
    stats = telemetry.export_stats
    assert stats.undelivered >= 1, stats  # the generation's own span (and its decode child) ended too late
    assert stats.dropped == 0 and stats.dropped_by_reason == {}, stats
