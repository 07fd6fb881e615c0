"""One rank of the NCCL plugin's distributed tests (real torch.distributed over gloo on CPU).

Run as ``python nccl_worker.py RANK WORLD PORT OUT_DIR``. It goes through every scenario in one
process group and writes ``OUT_DIR/rank{RANK}.json``: per phase, the spans and metric points its
in-memory exporters received, and the facts the parent test asserts on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

torch.set_num_threads(1)

RANK, WORLD, PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
results: dict[str, Any] = {"rank": RANK, "times": {}}
_T0 = time.perf_counter()


def mark(name: str) -> None:
    results["times"][name] = round(time.perf_counter() - _T0, 2)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


LINES = _Lines()
logging.getLogger("llamatelemetry").addHandler(LINES)
logging.getLogger("llamatelemetry").setLevel(logging.INFO)


def dump(telemetry: Any) -> dict[str, Any]:
    """The spans and metric points an InMemoryTelemetry holds, as JSON-able dicts."""
    spans = []
    for span in telemetry.spans():
        context = span.get_span_context()
        spans.append({
            "name": span.name, "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
            "start": span.start_time, "end": span.end_time, "attributes": dict(span.attributes or {}),
            "status": span.status.status_code.name,
            "events": [{"name": e.name, "timestamp": e.timestamp, "attributes": dict(e.attributes or {})}
                       for e in span.events],
        })
    points = []
    for point in telemetry.metric_points():
        raw = point.point
        points.append({"name": point.name, "unit": point.unit, "attributes": point.attributes,
                       "count": getattr(raw, "count", None), "sum": getattr(raw, "sum", None),
                       "value": getattr(raw, "value", None)})
    resource = telemetry.telemetry.tracer_provider.resource.attributes if telemetry.telemetry else {}
    return {"spans": spans, "metrics": points, "resource": {k: v for k, v in resource.items()}}


def main() -> None:
    from llamatelemetry.testing import InMemoryTelemetry
    from llamatelemetry_nccl import NCCLTracer, TorchDistributedInstrumentor, active_instrumentor
    from llamatelemetry_nccl.hotpath import METHODS

    group_class = dist.ProcessGroup
    originals = {name: group_class.__dict__[name] for name in METHODS if name in group_class.__dict__}
    original_init = dist.init_process_group

    # ---- phase 0: init(enable_nccl=True) before the process group exists, then init_process_group
    with InMemoryTelemetry(enable_nccl=True) as telemetry:
        deferred = dist.init_process_group is not original_init
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{PORT}", rank=RANK, world_size=WORLD)
        auto = active_instrumentor()
        t = torch.ones(16)
        dist.all_reduce(t)
        assert auto is not None
        auto.flush()
        phase = dump(telemetry)
    results["enable_nccl"] = {**phase, "deferred": deferred, "instrumented": auto is not None,
                              "spans_mode": auto.spans if auto else None,
                              "init_restored": dist.init_process_group is original_init,
                              "restored": all(group_class.__dict__[n] is o for n, o in originals.items())}

    # ---- the same after the group exists: instrumented at once, ranks and the job id on the resource
    os.environ["TORCHELASTIC_RUN_ID"] = "job-42"
    with InMemoryTelemetry(enable_nccl=True) as telemetry:
        auto = active_instrumentor()
        results["enable_nccl_after"] = {"instrumented": auto is not None and auto.is_instrumented,
                                        "run_id": auto.run_id if auto else None, **dump(telemetry)}
    del os.environ["TORCHELASTIC_RUN_ID"]
    mark("enable_nccl")
    # ---- phase 1: coverage of every op, identity, idempotence
    with InMemoryTelemetry() as telemetry:
        instrumentor = TorchDistributedInstrumentor(spans="all", arrival_every=0)
        first, second = instrumentor.instrument(), instrumentor.instrument()
        patched = all(group_class.__dict__[n] is not o for n, o in originals.items())
        peer = 1 - RANK
        x = torch.ones(8)  # 32 bytes
        send_or_recv = ("send", lambda: dist.send(x, peer)) if RANK == 0 else ("recv", lambda: dist.recv(x, peer))
        isend_or_irecv = (("send", lambda: dist.isend(x, peer).wait()) if RANK == 0
                          else ("recv", lambda: dist.irecv(x, peer).wait()))

        def batch() -> None:
            ops = [dist.P2POp(dist.isend, torch.ones(4), peer), dist.P2POp(dist.irecv, torch.zeros(4), peer)]
            for work in dist.batch_isend_irecv(ops):
                work.wait()

        def async_max() -> None:
            dist.all_reduce(torch.ones(4, dtype=torch.float64), op=dist.ReduceOp.MAX, async_op=True).wait()

        # (what dist.* call, the ops it must show as, nccl-tests' S in bytes for each)
        calls: list[tuple[Any, list[tuple[str, int]]]] = [
            (lambda: dist.all_reduce(x), [("all_reduce", 32)]),
            (lambda: dist.all_gather([torch.zeros(8), torch.zeros(8)], x), [("all_gather", 64)]),
            (lambda: dist.all_gather_into_tensor(torch.zeros(16), x), [("all_gather", 64)]),
            (lambda: dist.all_gather_single(torch.zeros(16), x), [("all_gather", 64)]),
            (lambda: dist.reduce_scatter(torch.zeros(8), [torch.ones(8), torch.ones(8)]), [("reduce_scatter", 64)]),
            (lambda: dist.reduce_scatter_tensor(torch.zeros(8), torch.ones(16)), [("reduce_scatter", 64)]),
            (lambda: dist.reduce_scatter_single(torch.zeros(8), torch.ones(16)), [("reduce_scatter", 64)]),
            (lambda: dist.broadcast(x, 0), [("broadcast", 32)]),
            (lambda: dist.reduce(x, 0), [("reduce", 32)]),
            (lambda: dist.all_to_all_single(torch.zeros(8), torch.ones(8)), [("all_to_all", 32)]),
            (lambda: dist.all_to_all([torch.zeros(4), torch.zeros(4)], [torch.ones(4), torch.ones(4)]),
             [("all_to_all", 32)]),
            (lambda: dist.barrier(), [("barrier", 0)]),
            (send_or_recv[1], [(send_or_recv[0], 32)]),
            (isend_or_irecv[1], [(isend_or_irecv[0], 32)]),
            (batch, [("send", 16), ("recv", 16)]),
            (async_max, [("all_reduce", 32)]),
        ]
        expected: list[tuple[str, int]] = []
        for call, shows in calls:
            call()
            expected.extend(shows)
        flushed = instrumentor.flush()
        instrumentor.uninstrument()
        instrumentor.uninstrument()
        phase = dump(telemetry)
        dist.all_reduce(torch.ones(2))  # still works, untraced
        after = len(telemetry.spans())
    results["coverage"] = {**phase, "expected": expected, "first": first, "second": second, "patched": patched,
                           "flushed": flushed, "spans_after_uninstrument": after - len(phase["spans"]),
                           "restored": all(group_class.__dict__[n] is o for n, o in originals.items())}

    mark("coverage")
    # ---- phase 2: async all_reduce, peer 200 ms late, caller waits after 300 ms
    with InMemoryTelemetry() as telemetry:
        instrumentor = TorchDistributedInstrumentor(spans="all", arrival_every=0)
        instrumentor.instrument()
        dist.barrier()
        if RANK == 1:
            time.sleep(0.2)
            dist.all_reduce(torch.ones(4))
        else:
            launched = time.perf_counter()
            work = dist.all_reduce(torch.ones(4), async_op=True)
            time.sleep(0.3)
            work.wait()
            results["async_wait_s"] = time.perf_counter() - launched
        instrumentor.flush()
        instrumentor.uninstrument()
        results["async"] = dump(telemetry)

    mark("async")
    # ---- phase 3: rank 1 arrives 50 ms late on every op; steps give one trace per step across ranks
    with InMemoryTelemetry() as telemetry:
        tracer = NCCLTracer(spans="sampled", step_sample_every=2, arrival_every=4)
        for step in range(4):
            with tracer.step(step):
                for _ in range(2):
                    if RANK == 1:
                        time.sleep(0.05)
                    tracer.trace_all_reduce(torch.ones(64), op="sum")
        tracer.trace_all_gather([torch.zeros(4), torch.zeros(4)], torch.ones(4))
        tracer.trace_all_gather(torch.zeros(8), torch.ones(4))
        tracer.trace_reduce_scatter(torch.zeros(4), [torch.ones(4), torch.ones(4)], op="max")
        tracer.trace_reduce_scatter(torch.zeros(4), torch.ones(8))
        tracer.trace_broadcast(torch.ones(4), src=1)
        tracer.trace_barrier()
        tracer.instrumentor.flush()
        results["run_id"] = tracer.instrumentor.run_id
        tracer.instrumentor.uninstrument()
        results["stragglers"] = dump(telemetry)

    mark("stragglers")
    # ---- phase 4: FSDP2 (fully_shard) and a DDP comm hook
    with InMemoryTelemetry() as telemetry:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel

        instrumentor = TorchDistributedInstrumentor(spans="all", arrival_every=0)
        instrumentor.instrument()
        torch.manual_seed(0)
        mesh = init_device_mesh("cpu", (WORLD,))
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
        model(torch.ones(2, 8)).sum().backward()
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        ddp = DistributedDataParallel(torch.nn.Linear(8, 4))
        ddp.register_comm_hook(None, allreduce_hook)
        ddp(torch.ones(2, 8)).sum().backward()
        instrumentor.flush()
        instrumentor.uninstrument()
        results["frameworks"] = dump(telemetry)

    mark("frameworks")
    # ---- phase 5: a rank that does not arrive; the watchdog on the waiting rank names it
    with InMemoryTelemetry() as telemetry:
        instrumentor = TorchDistributedInstrumentor(spans="sampled", stall_timeout_s=1.0, arrival_every=0)
        instrumentor.instrument()
        dist.all_reduce(torch.ones(4))
        instrumentor.flush()
        launched = time.time()
        if RANK == 1:
            time.sleep(2.5)  # skips the collective for 2.5 s: rank 0 blocks in it
        LINES.lines.clear()
        dist.all_reduce(torch.ones(4))
        processor = instrumentor.processor
        assert processor is not None
        stalls = list(processor.stalls)
        instrumentor.flush()
        instrumentor.uninstrument()
        results["watchdog"] = {**dump(telemetry), "launched": launched, "stalls": stalls,
                               "log": [line for line in LINES.lines if "stalled" in line]}
        if stalls:
            results["watchdog"]["detected_after_s"] = stalls[0]["age_s"]

    mark("watchdog")
    dist.barrier()
    dist.destroy_process_group()
    mark("end")
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w", encoding="utf-8") as out:
        json.dump(results, out, default=str)


if __name__ == "__main__":
    main()
