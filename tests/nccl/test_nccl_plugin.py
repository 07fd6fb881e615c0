"""The NCCL plugin in one process: nccl-tests arithmetic, arrival maths, step ids, modes, and the no-group no-op."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

import llamatelemetry_nccl
from llamatelemetry_nccl import instrumentor as instrumentor_module
from llamatelemetry_nccl import plugin
from llamatelemetry_nccl.bandwidth import bandwidths, bus_factor, collective_bytes, size_bucket
from llamatelemetry_nccl.errors import NoProcessGroupError, SpansModeError
from llamatelemetry_nccl.instrumentor import TorchDistributedInstrumentor, resolve_spans_mode
from llamatelemetry_nccl.processor import reduce_op_name
from llamatelemetry_nccl.steps import step_root_span_id, step_trace_id
from llamatelemetry_nccl.stragglers import arrivals, host_key


@pytest.mark.parametrize(("op", "n", "factor"), [
    ("all_reduce", 4, 1.5), ("all_reduce", 8, 1.75), ("all_gather", 4, 0.75), ("reduce_scatter", 8, 0.875),
    ("all_to_all", 4, 0.75), ("broadcast", 4, 1.0), ("reduce", 4, 1.0), ("send", 2, 1.0), ("recv", 2, 1.0),
    ("all_reduce", 1, None), ("all_gather", 1, None), ("barrier", 4, None),
])
def test_bus_factors_are_nccl_tests(op: str, n: int, factor: float | None) -> None:
    assert bus_factor(op, n) == factor


def test_bytes_are_the_whole_array_for_gather_scatter_and_all_to_all() -> None:
    # S per nccl-tests: one rank's buffer for all_reduce/broadcast/reduce/p2p, count x size x n otherwise.
    assert collective_bytes("all_reduce", 4096, 8) == 4096
    assert collective_bytes("broadcast", 4096, 8) == 4096
    assert collective_bytes("all_gather", 4096, 8) == 8 * 4096  # the input chunk, n times
    assert collective_bytes("reduce_scatter", 4096, 8) == 8 * 4096  # the output chunk, n times
    assert collective_bytes("all_to_all", 8 * 4096, 8) == 8 * 4096  # the input already holds n chunks
    algbw, busbw, factor = bandwidths("all_reduce", 1 << 20, 4, 0.001) or (0, 0, 0)
    assert (algbw, busbw, factor) == (pytest.approx(1.048576e9), pytest.approx(1.572864e9), 1.5)
    assert bandwidths("all_reduce", 1 << 20, 1, 0.001) is None
    assert bandwidths("barrier", 0, 4, 0.001) is None


def test_size_buckets_are_powers_of_two() -> None:
    assert [size_bucket(n) for n in (0, 1, 3, 1024, 1025, 3 << 20, 1 << 30)] == \
        ["0B", "1B", "4B", "1KiB", "2KiB", "4MiB", "1GiB"]


def _row(host: int, starts: list[int], durations: list[int]) -> list[int]:
    return [host, len(starts), *starts, *durations]


def test_arrivals_blame_the_last_arrival_not_the_longest_duration() -> None:
    # Rank 1 arrives 5 ms late: rank 0 waits (long duration), rank 1 finishes at once (short duration).
    rows = [_row(7, [1_000_000, 2_000_000], [5_200_000, 300_000]),
            _row(7, [6_000_000, 2_100_000], [200_000, 250_000])]
    first, second = arrivals(rows, my_index=0, trust_clocks=None)
    assert (first.last_rank, first.skew_s, first.wait_s, first.source) == (1, 0.005, 0.005, "clock")
    assert (second.last_rank, second.skew_s) == (1, pytest.approx(0.0001))
    assert arrivals(rows, my_index=1, trust_clocks=None)[0].wait_s == 0.0
    # Different hosts: clocks are not trusted; the straggler is the rank with the *shortest* duration.
    rows[1][0] = 8
    first, _ = arrivals(rows, my_index=0, trust_clocks=None)
    assert (first.last_rank, first.skew_s, first.wait_s, first.source) == (1, 0.005, 0.005, "duration")
    assert arrivals(rows, my_index=0, trust_clocks=True)[0].source == "clock"
    assert host_key("node-1") == host_key("node-1") != host_key("node-2")


def test_step_ids_are_deterministic_and_distinct() -> None:
    assert step_trace_id("run", 3) == step_trace_id("run", 3)
    ids = {step_trace_id(run, step) for run in ("a", "b") for step in range(50)}
    assert len(ids) == 100 and all(0 < i < 1 << 128 for i in ids)
    assert 0 < step_root_span_id("run", 3) < 1 << 64


def test_spans_mode_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(instrumentor_module.ENV_SPANS, raising=False)
    assert resolve_spans_mode(None) == "sampled"
    monkeypatch.setenv(instrumentor_module.ENV_SPANS, "ALL")
    assert resolve_spans_mode(None) == "all" and TorchDistributedInstrumentor().spans == "all"
    assert resolve_spans_mode("off") == "off"
    monkeypatch.setenv(instrumentor_module.ENV_SPANS, "some")
    with pytest.raises(SpansModeError, match=r"LLAMATELEMETRY_NCCL_SPANS='some' is not a spans mode: use 'sampled'"):
        TorchDistributedInstrumentor()


def test_reduce_op_names() -> None:
    import torch.distributed as dist

    options = dist.AllreduceOptions()
    options.reduceOp = dist.ReduceOp.MAX
    assert reduce_op_name(options) == "max"
    assert reduce_op_name(dist.ReduceOp.SUM) == "sum"
    assert reduce_op_name(None) is None


def test_without_a_process_group_instrumenting_is_a_no_op_said_once(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(instrumentor_module, "_said", set())
    before = dict(dist.ProcessGroup.__dict__)
    instrumentor = TorchDistributedInstrumentor()
    with caplog.at_level(logging.INFO, logger="llamatelemetry.nccl"):
        assert instrumentor.instrument() is False
        assert instrumentor.instrument() is False
        instrumentor.uninstrument()
    said = [r.getMessage() for r in caplog.records if "process group" in r.getMessage()]
    assert said == ["NCCL tracing waits for a process group: call instrument() after "
                    "torch.distributed.init_process_group() (init(enable_nccl=True) does it for you)."]
    assert dict(dist.ProcessGroup.__dict__) == before and not instrumentor.is_instrumented
    with pytest.raises(NoProcessGroupError, match="init_process_group"):
        llamatelemetry_nccl.NCCLTracer().trace_all_reduce(object())


def test_without_torch_instrumenting_is_a_no_op_said_once(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(instrumentor_module, "_said", set())
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with caplog.at_level(logging.INFO, logger="llamatelemetry.nccl"):
        assert TorchDistributedInstrumentor().instrument() is False
        assert TorchDistributedInstrumentor().instrument() is False
    said = [r.getMessage() for r in caplog.records if "torch is not installed" in r.getMessage()]
    assert len(said) == 1 and 'pip install "llamatelemetry-nccl[engine]"' in said[0]


def test_enable_nccl_before_a_group_waits_for_init_process_group_and_shutdown_restores_it() -> None:
    import torch.distributed as dist

    from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

    original = dist.init_process_group
    with fresh_plugin_manager(plugin), InMemoryTelemetry(enable_nccl=True):
        assert dist.init_process_group is not original and dist.init_process_group.__wrapped__ is original
    assert dist.init_process_group is original
    with fresh_plugin_manager(plugin), InMemoryTelemetry():
        assert dist.init_process_group is original  # without enable_nccl nothing is touched


def test_the_plugin_registers_the_torch_distributed_instrumentor_and_the_core_alias() -> None:
    import llamatelemetry.nccl

    [spec] = plugin.llamatelemetry_register_instrumentors()
    assert spec.name == "torch_distributed" and spec.load() is instrumentor_module.instrument_torch_distributed
    assert llamatelemetry.nccl.NCCLTracer is llamatelemetry_nccl.NCCLTracer
    assert llamatelemetry.nccl.TorchDistributedInstrumentor is TorchDistributedInstrumentor


@pytest.fixture
def one_rank_group() -> Any:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def test_one_rank_spans_from_the_environment_no_bus_bandwidth_and_counted_drops(
        one_rank_group: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from llamatelemetry.testing import InMemoryTelemetry

    dist = one_rank_group
    wait = dist.distributed_c10d.Work.__dict__["wait"]
    monkeypatch.setenv(instrumentor_module.ENV_SPANS, "all")
    with InMemoryTelemetry() as telemetry, caplog.at_level(logging.WARNING, logger="llamatelemetry.nccl"):
        instrumentor = TorchDistributedInstrumentor(ring_size=4, tick_s=0.5)
        assert instrumentor.instrument() and instrumentor.spans == "all"
        for _ in range(40):  # far more than the ring holds before the processor's next tick
            dist.all_reduce(torch.ones(4))
        assert instrumentor.flush(10.0)
        instrumentor.uninstrument()
        spans = telemetry.spans()
        dropped = sum(p.value for p in telemetry.metric_points("llamatelemetry.collective.dropped"))
        counted = sum(p.value for p in telemetry.metric_points("llamatelemetry.collective.duration"))
    assert dist.distributed_c10d.Work.__dict__["wait"] is wait
    assert 4 <= len(spans) == counted < 40 and dropped == 40 - counted
    assert any("ring of 4 records was full" in r.getMessage() for r in caplog.records)
    for span in spans:
        attributes = span.attributes or {}
        assert attributes["llamatelemetry.collective.group.size"] == 1
        assert attributes["llamatelemetry.collective.bytes"] == 16
        assert "llamatelemetry.collective.busbw" not in attributes  # no bus factor for one rank


def test_a_collective_that_fails_to_launch_has_the_core_error_type(one_rank_group: Any) -> None:
    """error.type is the core's value (``TypeError``, as on every other span), the span's status ERROR."""
    from opentelemetry.trace import StatusCode

    from llamatelemetry.testing import InMemoryTelemetry

    dist = one_rank_group
    with InMemoryTelemetry() as telemetry:
        instrumentor = TorchDistributedInstrumentor(spans="all", arrival_every=0)
        assert instrumentor.instrument()
        with pytest.raises(TypeError):
            dist.group.WORLD.allreduce("not a tensor")  # the process group's own method raises at launch
        assert instrumentor.flush(10.0)
        instrumentor.uninstrument()
        (span,) = telemetry.spans()
    assert span.name == "all_reduce" and span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "TypeError"


class FakeNCCLProcessGroup:
    """A FAKE of ProcessGroupNCCL's Python surface (no GPU or NCCL here): the timing switch, the completion hook
    (one per group, refused before timing is on, as ProcessGroupNCCL does) and the collective sequence number."""

    group_name = "fake-nccl"
    group_desc = "fake ProcessGroupNCCL"

    def __init__(self, issued: int) -> None:
        self.issued = issued
        self.calls: list[str] = []
        self.hook: Any = None

    def name(self) -> str:
        return "nccl"

    def size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0

    def _get_sequence_number_for_group(self) -> int:
        return self.issued

    def _enable_collectives_timing(self) -> None:
        self.calls.append("timing")

    def _register_on_completion_hook(self, hook: Any) -> None:
        if self.hook is not None:
            raise RuntimeError("ProcessGroupNCCL OnCompletion hook already registered")
        if "timing" not in self.calls:
            raise ValueError("ProcessGroupNCCL OnCompletion hook requires recording start and end events")
        self.calls.append("hook")
        self.hook = hook


class FakeNCCLWork:
    """A FAKE WorkNCCL: only its op type."""

    def __init__(self, op_type: str) -> None:
        self.op_type = op_type

    def _get_op_type(self) -> str:
        return self.op_type


def _fake_info(op_type: str, ms: float) -> Any:
    import datetime
    from types import SimpleNamespace

    # The fields of torch.distributed's WorkInfo that the processor reads.
    return SimpleNamespace(op_type=op_type, seq=0, active_duration=datetime.timedelta(milliseconds=ms),
                           time_started=datetime.datetime.now(), time_finished=datetime.datetime.now())


def test_the_nccl_completion_hook_goes_only_where_no_op_ran_without_timing_and_matches_by_op_type(
        one_rank_group: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Work made before timing was on makes ProcessGroupNCCL's hook thread abort the group's communicators."""
    import time

    import torch

    from llamatelemetry.testing import InMemoryTelemetry

    monkeypatch.delenv("TORCH_NCCL_ENABLE_TIMING", raising=False)
    fresh, used, late = FakeNCCLProcessGroup(0), FakeNCCLProcessGroup(5), FakeNCCLProcessGroup(0)
    with InMemoryTelemetry() as telemetry:
        instrumentor = TorchDistributedInstrumentor(spans="all", arrival_every=0)
        assert instrumentor.instrument()
        processor, run = instrumentor.processor, instrumentor._run
        assert processor is not None and run is not None
        processor.prepare_groups([fresh, used])
        assert fresh.calls == ["timing", "hook"] and processor.mode_of(fresh) == "hook"
        assert used.calls == [] and processor.mode_of(used) == "poll", "ops ran on it before: never hooked"
        assert processor.mode_of(late) == "poll" and late.calls == [], "first seen after its first op launched"
        monkeypatch.setenv("TORCH_NCCL_ENABLE_TIMING", "1")
        timed = FakeNCCLProcessGroup(7)
        assert processor.mode_of(timed) == "hook", "every Work has CUDA events when the variable was set"

        run.launched(FakeNCCLWork("ALLREDUCE"), fresh, "all_reduce", torch.ones(4), None, time.time_ns(), False)
        # An op we never recorded (a functional collective, a polled send) completes first: it must not take
        # the all_reduce's place, nor hold back the infos behind it.
        fresh.hook(_fake_info("SEND", 7.0))
        fresh.hook(_fake_info("ALLREDUCE", 3.0))
        assert instrumentor.flush(5.0)
        time.sleep(0.1)  # a few ticks: the unmatched info is dropped
        assert len(processor._hook_infos) == 0
        instrumentor.uninstrument()
        [span] = [s for s in telemetry.spans() if s.name == "all_reduce"]
        attributes = span.attributes or {}
        assert attributes["llamatelemetry.collective.duration"] == pytest.approx(0.003)
        assert attributes["llamatelemetry.collective.duration.source"] == "gpu"

    # After uninstrument the hook (NCCL cannot remove it) keeps nothing; a new instrumentor reuses it.
    fresh.hook(_fake_info("ALLREDUCE", 1.0))
    assert len(processor._hook_infos) == 0
    again = TorchDistributedInstrumentor(spans="off", arrival_every=0)
    assert again.instrument()
    try:
        assert again.processor is not None
        again.processor.prepare_groups([fresh])
        assert again.processor.mode_of(fresh) == "hook" and fresh.calls == ["timing", "hook"]
    finally:
        again.uninstrument()
