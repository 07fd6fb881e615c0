"""Reports, statistics, comparison, prompts and the GPU hook: the parts of the harness that need no server."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

from llamatelemetry.bench import (
    SCHEMA_VERSION,
    BenchmarkReport,
    Distribution,
    PromptFileError,
    ReportFormatError,
    ReportSchemaError,
    RequestRecord,
    TestResult,
    builtin_prompts,
    compare_reports,
    environment_differences,
    load_prompts,
    percentile,
)
from llamatelemetry.bench.gpu_monitor import NVMLGPUMonitor, default_gpu_monitor
from llamatelemetry.bench.html import render_html
from llamatelemetry.bench.prompts import plan_requests
from llamatelemetry.bench.records import summarize
from llamatelemetry.bench.render import render_comparisons, render_results
from llamatelemetry.bench.stats import max_overlap


def _record(index: int, *, ttft: float, e2e: float, out: int = 32, ok: bool = True, start: float = 0.0,
            error: str | None = None) -> RequestRecord:
    if not ok:
        return RequestRecord(index=index, prompt_id=f"p{index}", ok=False, scheduled_s=start, sent_s=start,
                             e2e_ms=e2e, error_type=error, error_message="boom")
    gaps = [(e2e - ttft) / (out - 1)] * (out - 1)
    return RequestRecord(index=index, prompt_id=f"p{index}", ok=True, scheduled_s=start, sent_s=start, ttft_ms=ttft,
                         e2e_ms=e2e, gaps_ms=gaps, tokens_per_chunk=[1] * out, chunks=out, input_tokens=20,
                         cached_input_tokens=0, output_tokens=out, server_prompt_ms=ttft / 2,
                         prefill_tps=1000.0, decode_tps=100.0, finish_reason="length")


def _test(name: str, scale: float = 1.0, *, failures: int = 0) -> TestResult:
    # Sequential requests 100 ms apart; latencies multiplied by scale (so throughput divides by it).
    records = [_record(i, ttft=10.0 * scale * (1 + i / 10), e2e=90.0 * scale, start=i * 0.1 * scale)
               for i in range(10)]
    records += [_record(10 + i, ttft=0, e2e=5.0, ok=False, start=1.0 * scale, error="ServerTimeoutError")
                for i in range(failures)]
    return TestResult(name=name, mode="concurrency", concurrency=1, request_rate=None, started_at="2026-01-01",
                      requests=tuple(records), summary=summarize(records, warmup_requests=1))


def _report(*tests: TestResult) -> BenchmarkReport:
    return BenchmarkReport(tests=tests, environment={"model": {"name": "tiny", "sha256": "abc"}},
                           config={"n_tokens": 32, "cache_prompt": False, "prompt_set": "builtin"}, name="unit")


# ------------------------------------------------------------------ statistics


def test_percentiles_match_numpy() -> None:
    np = pytest.importorskip("numpy")
    values = sorted(float(v) for v in np.random.default_rng(0).exponential(20.0, 501))
    for q in (0, 1, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    d = Distribution.of([*values, None])
    assert d.count == 501 and d.p99 == pytest.approx(float(np.percentile(values, 99)), abs=1e-3)
    assert d.min == pytest.approx(values[0], abs=1e-3) and d.max == pytest.approx(values[-1], abs=1e-3)
    assert Distribution.of([]) == Distribution(count=0)


def test_overlap_counts_simultaneous_intervals() -> None:
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # back to back is not overlap
    assert max_overlap([(0, 4), (1, 2), (1.5, 3), (3.5, 5)]) == 3
    assert max_overlap([]) == 0


def test_summary_figures() -> None:
    test = _test("t", failures=2)
    s = test.summary
    assert (s.completed, s.failed, s.warmup_requests) == (10, 2, 1)
    assert s.errors == {"ServerTimeoutError": 2} and s.error_rate == pytest.approx(2 / 12)
    assert s.total_output_tokens == 320
    assert s.duration_s == pytest.approx(1.005)  # first send to last end (the failures, sent at 1.0 s, end last)
    assert s.output_tokens_per_s == pytest.approx(320 / 1.005, rel=1e-3)
    assert s.metrics["tpot_ms"].p50 == pytest.approx((90.0 - 15.0) / 31, rel=0.05)
    assert s.metrics["itl_ms"].count == 10 * 31  # every gap, pooled
    assert s.metrics["ttft_ms"].count == 10  # failures are in no latency figure
    assert s.max_in_flight == 2 and s.max_decoding_at_once == 1  # the two failures were sent together


# ------------------------------------------------------------------ report JSON


def test_report_round_trips_through_json(tmp_path: Path) -> None:
    report = _report(_test("concurrency=1"), _test("concurrency=4", 2.0, failures=1))
    path = report.save(tmp_path / "out" / "report.json")
    again = BenchmarkReport.load(path)
    assert again.to_dict() == json.loads(path.read_text())
    assert again.tests[1].summary.errors == {"ServerTimeoutError": 1}
    # Times are kept to the microsecond, no finer: no clock here resolves more.
    assert again.tests[0].requests[3].gaps_ms == pytest.approx(report.tests[0].requests[3].gaps_ms, abs=5e-4)
    assert again.save(tmp_path / "again.json").read_text() == path.read_text().replace(
        str(report.created_at), str(again.created_at))
    assert again.test("concurrency=4").summary.metrics["ttft_ms"] == report.tests[1].summary.metrics["ttft_ms"]
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_unknown_schema_version_is_refused_clearly(tmp_path: Path) -> None:
    data = _report(_test("a")).to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportSchemaError, match=rf"schema version {SCHEMA_VERSION + 1}.*reads only version "
                                                rf"{SCHEMA_VERSION}.*upgrade"):
        BenchmarkReport.load(path)
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ReportFormatError, match="not a llamatelemetry benchmark report"):
        BenchmarkReport.load(path)
    path.write_text("{not json")
    with pytest.raises(ReportFormatError, match="not JSON"):
        BenchmarkReport.load(path)
    with pytest.raises(ReportFormatError, match="not found"):
        BenchmarkReport.load(tmp_path / "missing.json")


# ------------------------------------------------------------------ compare


def _by(comparisons: list[Any], metric: str) -> Any:
    return next(c for c in comparisons if c.metric == metric)


def test_compare_knows_which_direction_is_better() -> None:
    base = _report(_test("c1"))
    slower = _report(_test("c1", 1.5))  # every latency +50 %, every throughput -33 %
    faster = _report(_test("c1", 0.5))
    worse = compare_reports(base, slower, 10.0)
    assert _by(worse, "ttft_ms.p50").regression and _by(worse, "ttft_ms.p50").delta_pct == pytest.approx(50.0)
    assert _by(worse, "throughput.output_tokens_per_s").regression
    assert _by(worse, "throughput.output_tokens_per_s").delta_pct == pytest.approx(-33.33, abs=0.1)
    better = compare_reports(base, faster, 10.0)
    assert not any(c.regression for c in better)
    assert _by(better, "e2e_ms.p99").improved and _by(better, "throughput.requests_per_s").improved
    assert all(c.test_name == "c1" for c in better)
    # Within the threshold is not a regression; dicts are accepted as well as reports.
    assert not any(c.regression for c in compare_reports(base.to_dict(), slower.to_dict(), 60.0))


def test_compare_flags_new_errors_and_missing_tests() -> None:
    base = _report(_test("c1"), _test("c4"))
    now = _report(_test("c1", failures=1))
    comparisons = compare_reports(base, now, 10.0)
    errors = next(c for c in comparisons if c.metric == "error_rate" and c.test_name == "c1")
    assert errors.regression and errors.baseline == 0 and errors.delta_pct is None
    missing = next(c for c in comparisons if c.test_name == "c4")
    assert missing.regression and "missing" in missing.note
    with pytest.raises(ValueError, match="unknown metric"):
        compare_reports(base, now, metrics=["latency"])
    table = render_comparisons(comparisons, 10.0)
    assert "REGRESSION" in table and "regression(s) beyond 10%" in table


def test_environment_differences_are_named() -> None:
    base, now = _report(_test("a")), _report(_test("a"))
    now = attrs.evolve(now, environment={"model": {"name": "tiny", "sha256": "def"}})
    assert environment_differences(base, now) == ["model sha256: abc -> def"]


# ------------------------------------------------------------------ rendering


def test_results_table_and_html_page() -> None:
    report = _report(_test("concurrency=1"), _test("concurrency=4", 2.0, failures=1))
    table = render_results(report)
    assert "TTFT (ms)" in table and "inter-chunk gap (ms)" in table and "concurrency=4" in table
    assert "errors: ServerTimeoutError x1" in table
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 6
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert "<script" not in page.lower() and "src=" not in page and "href=" not in page
    assert "concurrency=4 (n=10)" in page


# ------------------------------------------------------------------ prompts


def test_jsonl_prompt_files(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('# a comment\n"plain text"\n\n{"id": "x", "prompt": "with id", "max_tokens": 7}\n'
                    '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}\n')
    prompts = load_prompts(path)
    assert [p.id for p in prompts] == ["prompts-2", "x", "prompts-5"]
    assert prompts[1].max_tokens == 7 and prompts[2].messages[0]["role"] == "system"
    path.write_text('"ok"\n{"prompt": 3}\n')
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:2: .*\"prompt\" string"):
        load_prompts(path)
    path.write_text('"ok"\n{broken\n')
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:2: not JSON"):
        load_prompts(path)


def test_builtin_prompts_vary_in_length_and_plans_are_seeded() -> None:
    words = {c: [len(p.text.split()) for p in builtin_prompts(c)] for c in ("short", "medium", "long")}
    assert max(words["short"]) < min(words["medium"]) and max(words["medium"]) < min(words["long"])
    prompts = builtin_prompts()
    plan = plan_requests(prompts, 30, seed=5)
    assert plan == plan_requests(prompts, 30, seed=5) and plan != plan_requests(prompts, 30, seed=6)
    assert {p.id for p in plan[:12]} == {p.id for p in prompts}  # whole passes: every prompt once per pass


# ------------------------------------------------------------------ GPU hook


@pytest.mark.may_skip("runs only on a machine without a GPU")
def test_no_gpu_means_no_gpu_figures() -> None:
    gpu = pytest.importorskip("llamatelemetry.gpu")
    if gpu.list_devices():
        pytest.skip("this machine has a GPU")
    assert default_gpu_monitor() is None


class _FakeReading:
    """A recorded NVML-like reading (a fake: no GPU here)."""

    def __init__(self, memory: int, energy: float | None, power: float | None) -> None:
        self.memory_used_bytes, self.energy_j, self.power_w = memory, energy, power


def test_gpu_monitor_peak_memory_and_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook contract against a fake GPU module (named so): peak memory, energy counter, power fallback."""
    readings = iter([[_FakeReading(100, 1000.0, 50.0), _FakeReading(10, None, 100.0)],
                     [_FakeReading(300, 1010.0, 50.0), _FakeReading(20, None, 100.0)],
                     [_FakeReading(200, 1025.0, 50.0), _FakeReading(15, None, 100.0)]])

    class FakeSource:
        def read(self, indices: list[int]) -> list[_FakeReading]:
            return next(readings)

        def close(self) -> None:
            pass

    fake = types.SimpleNamespace(open_source=FakeSource, GPUSnapshot=None,
                                 list_devices=lambda: [types.SimpleNamespace(index=0, name="Fake GPU A"),
                                                       types.SimpleNamespace(index=1, name="Fake GPU B")])
    monitor = NVMLGPUMonitor(fake, fake.list_devices(), interval_s=3600)  # samples only at start and stop
    clock = iter([0.0, 2.0])
    monkeypatch.setattr("llamatelemetry.bench.gpu_monitor.time.monotonic", lambda: next(clock))
    monitor.start()
    monitor._sample()  # a middle sample, as the thread would take
    monkeypatch.setattr("llamatelemetry.bench.gpu_monitor.time.monotonic", lambda: 4.0)
    figures = monitor.stop()
    assert figures is not None and figures.devices == ("Fake GPU A", "Fake GPU B")
    assert figures.peak_memory_used_bytes == (300, 20)
    # Device A: its energy counter moved 25 J; device B has none: 100 W for 4 s = 400 J.
    assert figures.energy_joules == pytest.approx(425.0)
    summary = summarize([_record(0, ttft=5, e2e=50, out=100)], gpu=figures)
    assert summary.gpu is not None and summary.gpu.joules_per_output_token == pytest.approx(4.25)
    monkeypatch.setitem(sys.modules, "llamatelemetry.gpu", fake)
    assert isinstance(default_gpu_monitor(), NVMLGPUMonitor)
