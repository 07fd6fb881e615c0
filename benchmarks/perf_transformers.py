"""transformers telemetry overhead: instrumented / bare ``generate`` time ratio (budget <= 1.02), as a table.

On a tiny random Llama built in code (2 layers, 64 dimensions; no hub), on the CPU:

1. a user's model: ``model.generate`` after ``instrument_transformers`` (telemetry on: span, token clock,
   prefill/decode spans, request hooks, metrics) vs. the same model before;
2. the same, batched (4 prompts, left padding);
3. ``TransformersBackend`` through an engine with telemetry on vs. off.

Bare and instrumented runs alternate so drift on a busy machine hits both; each ratio is the median
of per-pair ratios (the verdict), printed beside the ratio of the fastest runs (the intrinsic cost,
which other load on the machine cannot inflate). A last row measures the instrumentation's own cost
per call: the wrapper around a stand-in ``generate`` that returns ids made beforehand and feeds the
token clock 32 steps, so only our code is timed. Run with ``nox -s perf`` or
``python benchmarks/perf_transformers.py``.
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perf_llamacpp import BUDGET

PAIRS = 60


def paired(bare: Callable[[], Any], instrumented: Callable[[], Any], pairs: int, *,
           before_bare: Callable[[], Any], before_instrumented: Callable[[], Any]) -> str:
    """``bare -> instrumented`` medians, the median per-pair ratio and the ratio of the fastest runs."""
    steps = ((before_bare, bare), (before_instrumented, instrumented))
    for _ in range(3):  # warm caches and allocators
        for before, run in steps:
            before()
            run()
    ratios: list[float] = []
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(pairs):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        measured = [0.0, 0.0]
        for which in order:
            before, run = steps[which]
            before()
            started = time.perf_counter()
            run()
            measured[which] = time.perf_counter() - started
        times[0].append(measured[0])
        times[1].append(measured[1])
        ratios.append(measured[1] / measured[0])
    ratio = statistics.median(ratios)
    return (f"{statistics.median(times[0]) * 1e3:7.2f} ms -> {statistics.median(times[1]) * 1e3:7.2f} ms  "
            f"x{ratio:.3f} (fastest x{min(times[1]) / min(times[0]):.3f})")


def _telemetry(llamatelemetry: Any) -> Any:
    # Real SDK providers exporting nowhere slow: the caller-side cost is what is measured.
    return llamatelemetry.init(service_name="perf-transformers", traces_exporter="none", metrics_exporter="none",
                               use_existing_providers=False, set_global_providers=False)


def instrumented_generate(folder: Path, pairs: int, tokens: int) -> list[tuple[str, str]]:
    """Rows for a user's model.generate, single and batched."""
    import torch
    import transformers

    import llamatelemetry
    from llamatelemetry_transformers.instrument import instrument_transformers, uninstrument_transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    single = tokenizer("tell me a story about the fox", return_tensors="pt")
    batch = tokenizer(["tell me a story", "hello world, how are you today?", "the quick brown fox",
                       "once upon a time"], return_tensors="pt", padding=True)
    rows: list[tuple[str, str]] = []
    _telemetry(llamatelemetry)
    try:
        for label, inputs in (("single prompt", single), ("batch of 4", batch)):
            def run(inputs: Any = inputs) -> Any:
                with torch.inference_mode():
                    return model.generate(**inputs, max_new_tokens=tokens, do_sample=False)

            row = paired(run, lambda run=run: run(), pairs, before_bare=lambda: uninstrument_transformers(model),
                         before_instrumented=lambda: instrument_transformers(model, tokenizer))
            uninstrument_transformers(model)
            rows.append((f"model.generate, {tokens} tokens, {label}", row))
        rows.append(wrapper_cost(model, tokenizer, single, tokens))
    finally:
        llamatelemetry.shutdown()
    return rows


def backend_engine(folder: Path, pairs: int, tokens: int) -> tuple[str, str]:
    """Row for TransformersBackend through an engine, telemetry on vs off."""
    import llamatelemetry
    from llamatelemetry.inference import InferenceEngine, InferenceRequest, SamplingParams
    from llamatelemetry_transformers.backend import TransformersBackend

    request = InferenceRequest(messages=[{"role": "user", "content": "tell me a story"}], max_tokens=tokens,
                               sampling=SamplingParams(temperature=0.0))
    with InferenceEngine(TransformersBackend(folder, device="cpu")) as engine:
        def bare() -> Any:
            return engine.generate(request)

        def instrumented() -> Any:
            return engine.generate(request)

        row = paired(bare, instrumented, pairs, before_bare=llamatelemetry.shutdown,
                     before_instrumented=lambda: llamatelemetry.current() or _telemetry(llamatelemetry))
        llamatelemetry.shutdown()
    return (f"TransformersBackend via engine, {tokens} tokens", row)


def wrapper_cost(model: Any, tokenizer: Any, inputs: Any, tokens: int) -> tuple[str, str]:
    """Row for the instrumentation's own cost per generate call (telemetry on), the model left out."""
    from llamatelemetry_transformers.instrument import _traced_generate, instrument_transformers

    ids = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        streamer = kwargs.get("streamer")
        if streamer is not None:
            streamer.put(inputs["input_ids"])
            for step in range(tokens):
                streamer.put(ids[:, inputs["input_ids"].shape[1] + step])
            streamer.end()
        return ids

    instrument_transformers(model, tokenizer)
    arguments = {**inputs, "max_new_tokens": tokens, "do_sample": False}
    samples: list[float] = []
    for index in range(700):
        started = time.perf_counter()
        _traced_generate(model, stand_in, (), dict(arguments))
        if index >= 200:  # after warm-up
            samples.append(time.perf_counter() - started)
    return (f"instrumentation alone per generate call ({tokens} steps)",
            f"median {statistics.median(samples) * 1e6:6.1f} us, fastest {min(samples) * 1e6:6.1f} us")


def main() -> int:
    """Measure and print the table."""
    import torch

    from llamatelemetry_transformers.testing import write_tiny_model

    # One intra-op thread: on a 2-core machine, two spinning torch threads turn any other load into noise
    # larger than the overhead measured (a tiny model gains nothing from a second thread anyway).
    torch.set_num_threads(1)
    print(f"llamatelemetry perf_transformers | Python {platform.python_version()} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads | {platform.platform()}")
    folder = write_tiny_model(Path(tempfile.mkdtemp(prefix="perf-transformers-")) / "tiny-llama", eos_reachable=False)
    rows = instrumented_generate(folder, pairs=PAIRS, tokens=32)
    rows.append(backend_engine(folder, pairs=PAIRS, tokens=32))
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'bare -> instrumented, median ratio (fastest runs)':<58}  budget   verdict")
    for name, value in rows:
        if " x" not in value:
            print(f"{name:<{width}}  {value:<58}  (the ratios' numerator)")
            continue
        ratio = float(value.split(" x", 1)[1].split()[0])
        print(f"{name:<{width}}  {value:<58}  <= {BUDGET}  {'ok' if ratio <= BUDGET else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
