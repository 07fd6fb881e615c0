"""NCCL plugin overhead per collective, as a table (budget: <= 2 us added with spans off, DESIGN.md section 5).

On a one-rank gloo group on the CPU (real torch.distributed, no GPU):

1. ``dist.all_reduce`` of 4 bytes, bare vs. instrumented with ``spans="off"`` (metrics only) and with
   ``spans="all"`` (a span per op, built after the fact on the background thread). Bare and instrumented
   batches alternate so drift on a busy machine hits both; figures are medians over batches.
2. The hot path alone, which is what the budget is about: the wrapper's bookkeeping for one op on
   the caller's thread (clock, sizes, sequence number, ring append; completion callbacks are attached
   later by the background thread) on a real, completed gloo Work, and the ``Work.wait`` wrapper. Only
   our code is timed, so other load cannot inflate it much. Row 1's end-to-end difference also holds
   the background thread's metric work (GIL time), which the budget does not cover: read both.

Run with ``nox -s perf`` or ``python benchmarks/perf_nccl.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

BUDGET_US = 2.0
BATCH = 200
BATCHES = 30


def per_op_us(run: Callable[[], Any], n: int) -> float:
    """Mean microseconds of ``run()`` over ``n`` calls."""
    started = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - started) / n * 1e6


def alternating(bare: Callable[[], Any], traced: Callable[[], Any], enter: Callable[[], Any],
                leave: Callable[[], Any]) -> tuple[float, float]:
    """Median per-op microseconds of ``bare`` and of ``traced`` (instrumented between ``enter``/``leave``)."""
    bare_us: list[float] = []
    traced_us: list[float] = []
    for _ in range(BATCHES):
        bare_us.append(per_op_us(bare, BATCH))
        enter()
        traced_us.append(per_op_us(traced, BATCH))
        leave()
    return statistics.median(bare_us), statistics.median(traced_us)


def main() -> int:
    import torch
    import torch.distributed as dist

    from llamatelemetry.testing import InMemoryTelemetry
    from llamatelemetry_nccl import TorchDistributedInstrumentor
    from llamatelemetry_nccl.hotpath import Active, make_wrapper

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    tensor = torch.ones(1)
    rows: list[tuple[str, str]] = []
    verdict = True

    def all_reduce() -> None:
        dist.all_reduce(tensor)

    with InMemoryTelemetry() as telemetry:
        for _ in range(500):  # warm up gloo and the allocator
            all_reduce()
        for spans in ("off", "all"):
            instrumentor = TorchDistributedInstrumentor(spans=spans)

            def enter(instrumentor: TorchDistributedInstrumentor = instrumentor) -> None:
                instrumentor.instrument()

            def leave(instrumentor: TorchDistributedInstrumentor = instrumentor) -> None:
                instrumentor.flush(10.0)
                instrumentor.uninstrument()

            bare, traced = alternating(all_reduce, all_reduce, enter, leave)
            rows.append((f"dist.all_reduce 4 B, spans={spans}",
                         f"{bare:7.1f} us -> {traced:7.1f} us  (+{traced - bare:6.1f} us)"))
            telemetry.clear()

        # The hot path alone: the traced wrapper around a stand-in for the original method that returns a
        # real, completed gloo Work, against calling the stand-in directly.
        instrumentor = TorchDistributedInstrumentor(spans="off")
        instrumentor.instrument()
        assert Active.run is not None
        group = dist.group.WORLD
        work = group.allreduce([tensor])
        work.wait()
        options = dist.AllreduceOptions()

        def original(pg: Any, tensors: Any, opts: Any) -> Any:
            return work

        traced = make_wrapper(original, "all_reduce", 0, 1, False)
        inputs = [tensor]

        def hot_path() -> None:
            traced(group, inputs, options)

        def bare_call() -> None:
            original(group, inputs, options)

        samples = [per_op_us(hot_path, 2000) - per_op_us(bare_call, 2000) for _ in range(15)]
        hot = statistics.median(samples)
        verdict = hot <= BUDGET_US
        rows.append(("hot path per op, spans off (median; best)",
                     f"{hot:7.2f} us; {min(samples):.2f} us  budget <= {BUDGET_US} us  "
                     f"{'OK' if verdict else 'OVER'}"))
        waits = [per_op_us(work.wait, 2000) for _ in range(5)]
        instrumentor.flush(10.0)
        instrumentor.uninstrument()
        bare_waits = [per_op_us(work.wait, 2000) for _ in range(5)]
        rows.append(("Work.wait on a completed op", f"{min(bare_waits):7.2f} us -> {min(waits):7.2f} us"))
    dist.destroy_process_group()

    print(f"\nNCCL plugin overhead per collective (Python {platform.python_version()}, torch {torch.__version__}, "
          f"gloo, 1 rank, {BATCHES} x {BATCH} ops)")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("  (spans=all builds each span on the background thread: it shows up as GIL contention, not in the "
          "caller's bookkeeping)")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
