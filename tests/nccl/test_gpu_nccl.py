"""NCCL itself, at world size 1 (NCCL refuses two ranks on one GPU): runs where an NVIDIA GPU is, skipped elsewhere.

Each test prints what it measured (run with ``-s``) so the figures can be copied into docs/nccl.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

C = "llamatelemetry.collective."


@pytest.fixture
def nccl_group() -> Iterator[Any]:
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    if not torch.cuda.is_available() or not dist.is_nccl_available():
        pytest.fail("the gpu marker promised a GPU, but torch sees no CUDA device or no NCCL")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()  # the completion hook needs the group destroyed before exit


def test_nccl_ops_are_timed_by_the_completion_hook_on_the_gpu(nccl_group: Any) -> None:
    import torch

    from llamatelemetry.testing import InMemoryTelemetry
    from llamatelemetry_nccl import TorchDistributedInstrumentor

    dist = nccl_group
    tensor = torch.ones(1 << 20, device="cuda")  # 4 MiB
    with InMemoryTelemetry() as telemetry:
        instrumentor = TorchDistributedInstrumentor(spans="all")
        assert instrumentor.instrument()
        for _ in range(3):
            dist.all_reduce(tensor)
        work = dist.all_reduce(tensor, async_op=True)  # never waited on: the hook still ends it
        torch.cuda.synchronize()
        assert instrumentor.flush(30.0), "every NCCL op must be completed by the hook"
        instrumentor.uninstrument()
        spans = [s for s in telemetry.spans() if s.name == "all_reduce"]
        durations = [m for m in telemetry.metric_points(C + "duration")]
    del work
    figures = [{"source": s.attributes[C + "duration.source"], "duration_us": s.attributes[C + "duration"] * 1e6,
                "bytes": s.attributes[C + "bytes"], "backend": s.attributes[C + "backend"]} for s in spans]
    print(f"\n[gpu] nccl all_reduce 4 MiB at world size 1: {json.dumps(figures)}")
    assert len(spans) == 4 and sum(int(p.value) for p in durations) == 4
    for span, figure in zip(spans, figures, strict=True):
        assert figure["source"] == "gpu" and figure["backend"] == "nccl"
        assert figure["bytes"] == 4 << 20 and 0 < figure["duration_us"] < 1e6
        assert C + "busbw" not in span.attributes  # no bus factor for one rank
