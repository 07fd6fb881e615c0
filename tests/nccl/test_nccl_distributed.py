"""The NCCL plugin on real torch.distributed: two gloo ranks on CPU run every scenario once (nccl_worker.py).

One process group serves all checks: the ranks write what their in-memory exporters received, per phase,
and each test below asserts on one phase. Real collectives, real completion, real store; no fakes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry_nccl.steps import step_trace_id

WORKER = Path(__file__).with_name("nccl_worker.py")
C = "llamatelemetry.collective."
# nccl-tests' bus factors at n = 2.
FACTOR_AT_2 = {"all_reduce": 1.0, "all_gather": 0.5, "reduce_scatter": 0.5, "all_to_all": 0.5, "broadcast": 1.0,
               "reduce": 1.0, "send": 1.0, "recv": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("nccl")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "LLAMATELEMETRY_NCCL_RUN_ID",
                        "LLAMATELEMETRY_NCCL_SPANS", "LLAMATELEMETRY_ENABLE_NCCL")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def _ops(phase: dict[str, Any], op: str | None = None) -> list[dict[str, Any]]:
    spans = [s for s in phase["spans"] if s["name"] != C + "step" and (op is None or s["name"] == op)]
    return sorted(spans, key=lambda s: s["attributes"][C + "seq"])


def _metric(phase: dict[str, Any], name: str, op: str) -> list[dict[str, Any]]:
    return [m for m in phase["metrics"] if m["name"] == name and m["attributes"].get(C + "op") == op]


def test_every_op_is_traced_once_with_nccl_tests_bytes_and_bandwidth(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        phase = result["coverage"]
        spans = _ops(phase)
        assert [(s["name"], s["attributes"][C + "bytes"]) for s in spans] == [tuple(e) for e in phase["expected"]]
        assert [s["attributes"][C + "seq"] for s in spans] == list(range(1, len(spans) + 1))
        for span in spans:
            a = span["attributes"]
            assert a[C + "op"] == span["name"] and a[C + "group.size"] == 2 and a[C + "group.rank"] == rank
            assert a[C + "rank"] == rank and a[C + "backend"] == "gloo" and a[C + "group.desc"] == "default_pg"
            assert a[C + "duration.source"] in ("completion", "wait")
            assert a[C + "duration"] == pytest.approx((span["end"] - span["start"]) / 1e9, rel=1e-6)
            if span["name"] == "barrier":
                assert C + "busbw" not in a
                continue
            factor = FACTOR_AT_2[span["name"]]
            assert a[C + "bus_factor"] == factor
            assert a[C + "algbw"] == pytest.approx(a[C + "bytes"] / a[C + "duration"], rel=1e-6)
            assert a[C + "busbw"] == pytest.approx(a[C + "algbw"] * factor, rel=1e-9)
        first, last = spans[0]["attributes"], spans[-1]["attributes"]
        assert (first[C + "reduce_op"], first[C + "dtype"], first[C + "count"], first[C + "async"]) == \
            ("sum", "float32", 8, False)
        assert (last[C + "reduce_op"], last[C + "dtype"], last[C + "count"], last[C + "async"]) == \
            ("max", "float64", 4, True)
        p2p = [s["attributes"] for s in spans if s["name"] in ("send", "recv")]
        assert [a[C + "peer"] for a in p2p] == [1 - rank] * 4
        assert [a[C + "async"] for a in p2p] == [False, True, True, True]  # send/recv, isend/irecv, batch x2
        # Call sites are the application's lines, not torch.distributed's.
        assert all(s["attributes"]["code.file.path"] == str(WORKER) for s in spans)
        # A sync op ends when its wait() returns (dist.* waits at once: that is its completion) unless the
        # completion callback came first; gloo's reduce_scatter has no future, only wait().
        sources = [(s["name"], s["attributes"][C + "duration.source"]) for s in spans]
        assert {source for name, source in sources if name == "reduce_scatter"} == {"wait"}
        # (or, ended by its wait(), it took no longer than a quick local all_reduce on a busy machine)
    assert sources[-1] == ("all_reduce", "completion") or last[C + "duration"] < 0.05


def test_instrument_and_uninstrument_are_idempotent_and_restore_the_same_objects(
        ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        phase = result["coverage"]
        assert phase["first"] is True and phase["second"] is True and phase["patched"] is True
        assert phase["restored"] is True, "uninstrument() must put back the very same method objects"
        assert phase["flushed"] is True
        assert phase["spans_after_uninstrument"] == 0


def test_an_async_all_reduce_is_timed_to_its_completion_not_to_the_late_wait(ranks: list[dict[str, Any]]) -> None:
    # Rank 1 joins 200 ms late; rank 0 launched at once and called wait() only after 300 ms.
    assert ranks[0]["async_wait_s"] >= 0.3
    span = _ops(ranks[0]["async"], "all_reduce")[0]
    a = span["attributes"]
    assert a[C + "async"] is True and a[C + "duration.source"] == "completion"
    # Near the peer's 200 ms, and below the 300 ms at which wait() was called (what a wait-timed span shows).
    assert 0.17 <= a[C + "duration"] < 0.3, a[C + "duration"]
    late = _ops(ranks[1]["async"], "all_reduce")[0]["attributes"]
    # The late rank found its peer waiting: its op is short, far from the 200 ms the early rank saw.
    assert late[C + "async"] is False and late[C + "duration"] < 0.15


def test_the_late_rank_is_blamed_not_the_one_that_waited(ranks: list[dict[str, Any]]) -> None:
    # Rank 1 sleeps 50 ms before every all_reduce of the steps.
    spans = [_ops(result["stragglers"], "all_reduce") for result in ranks]
    assert len(spans[0]) == len(spans[1]) == 4  # steps 0 and 2 are sampled, two ops each
    for mine, theirs in zip(spans[0], spans[1], strict=True):
        for a in (mine["attributes"], theirs["attributes"]):
            assert a[C + "last_arrival_rank"] == 1
            assert 0.035 <= a[C + "arrival_skew"] <= 0.3
            assert a[C + "arrival_skew.source"] == "clock"
        # The trap: the waiting rank shows the long duration, the straggler the short one.
        assert mine["attributes"][C + "duration"] > theirs["attributes"][C + "duration"] + 0.03
    waits = [sum(m["sum"] for m in _metric(r["stragglers"], C + "wait", "all_reduce")) for r in ranks]
    assert waits[0] >= 8 * 0.035 and waits[1] < waits[0] / 4
    skews = _metric(ranks[0]["stragglers"], C + "arrival_skew", "all_reduce")
    assert sum(m["count"] for m in skews) == 8 and all(m["unit"] == "s" for m in skews)


def test_one_trace_per_step_across_ranks_with_a_step_span_per_rank(ranks: list[dict[str, Any]]) -> None:
    run_id = ranks[0]["run_id"]
    assert run_id and ranks[1]["run_id"] == run_id
    steps = [{s["attributes"][C + "step"]: s for s in r["stragglers"]["spans"] if s["name"] == C + "step"}
             for r in ranks]
    assert sorted(steps[0]) == sorted(steps[1]) == [0, 1, 2, 3]
    for number in range(4):
        a, b = steps[0][number], steps[1][number]
        assert a["trace_id"] == b["trace_id"] == f"{step_trace_id(run_id, number):032x}"
        assert a["parent_id"] == b["parent_id"] and a["span_id"] != b["span_id"]
    assert len({steps[0][n]["trace_id"] for n in range(4)}) == 4
    for rank, result in enumerate(ranks):
        for span in _ops(result["stragglers"], "all_reduce"):
            step = steps[rank][span["attributes"][C + "step"]]
            assert span["attributes"][C + "step"] in (0, 2)  # step_sample_every=2
            assert span["trace_id"] == step["trace_id"] and span["parent_id"] == step["span_id"]
            assert step["start"] <= span["start"] <= span["end"] <= step["end"]
        # Unsampled steps still count in the metrics.
        assert sum(m["count"] for m in _metric(result["stragglers"], C + "duration", "all_reduce")) == 8


def test_nccl_tracer_runs_each_collective_through_the_same_path(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        phase = result["stragglers"]
        counts = {op: sum(m["count"] for m in _metric(phase, C + "duration", op))
                  for op in ("all_gather", "reduce_scatter", "broadcast", "barrier")}
        assert counts == {"all_gather": 2, "reduce_scatter": 2, "broadcast": 1, "barrier": 1}
        moved = {op: sum(m["value"] for m in _metric(phase, C + "bytes", op))
                 for op in ("all_reduce", "all_gather", "reduce_scatter", "broadcast")}
        assert moved == {"all_reduce": 8 * 256, "all_gather": 2 * 32, "reduce_scatter": 2 * 32, "broadcast": 16}
        units = {m["name"]: m["unit"] for m in phase["metrics"] if m["name"].startswith(C)}
        assert units == {C + "duration": "s", C + "busbw": "By/s", C + "bytes": "By", C + "arrival_skew": "s",
                         C + "wait": "s"}


def test_fsdp2_and_a_ddp_comm_hook_are_seen(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        spans = _ops(result["frameworks"])
        fsdp = {s["name"] for s in spans if "/fsdp/" in s["attributes"]["code.file.path"]}
        assert fsdp == {"all_gather", "reduce_scatter"}
        hooked = [s for s in spans if s["attributes"]["code.file.path"].endswith("default_hooks.py")]
        assert [s["name"] for s in hooked] == ["all_reduce"]
        assert hooked[0]["attributes"][C + "async"] is True


def test_the_watchdog_names_the_rank_that_never_arrived_and_kills_nothing(ranks: list[dict[str, Any]]) -> None:
    # Rank 1 held back its all_reduce for 2.5 s; the threshold was 1 s. Both ranks exited normally.
    waiting = ranks[0]["watchdog"]
    assert len(waiting["stalls"]) == 1
    stall = waiting["stalls"][0]
    assert (stall["op"], stall["seq"], stall["missing_ranks"]) == ("all_reduce", 2, [1])
    assert 1.0 <= stall["age_s"] <= 2.0  # within threshold + 1 s
    assert "dist.all_reduce(torch.ones(4))" in stall["stack"]
    assert len(waiting["log"]) == 1
    line = waiting["log"][0]
    for part in ("op=all_reduce", "seq=2", "group=0", "ranks that never arrived=1", "blocked stack", "nccl_worker.py"):
        assert part in line
    [span] = _ops(waiting, "all_reduce")[-1:]
    [event] = [e for e in span["events"] if e["name"] == C + "stalled"]
    assert event["attributes"][C + "stall.missing_ranks"] == [1]
    assert event["attributes"][C + "stall.age"] >= 1.0
    assert span["attributes"][C + "duration"] >= 2.0 and span["status"] == "UNSET"
    assert ranks[1]["watchdog"]["stalls"] == [] and ranks[1]["watchdog"]["log"] == []


def test_init_enable_nccl_instruments_once_a_process_group_exists(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        before = result["enable_nccl"]
        assert before["deferred"] and before["instrumented"] and before["spans_mode"] == "sampled"
        assert before["init_restored"] and before["restored"]
        assert before["spans"] == []  # sampled mode, no step: metrics only
        assert [m["count"] for m in _metric(before, C + "duration", "all_reduce")] == [1]
        assert "llamatelemetry.distributed.rank" not in before["resource"]  # unknown at init(): not guessed
        after = result["enable_nccl_after"]
        assert after["instrumented"] and after["run_id"] == "job-42"
        resource = after["resource"]
        assert resource["llamatelemetry.distributed.rank"] == rank
        assert resource["llamatelemetry.distributed.world_size"] == 2
        assert resource["llamatelemetry.distributed.job_id"] == "job-42" and resource["host.name"]
