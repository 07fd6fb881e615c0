"""``compare_reports``: metric-by-metric deltas between two reports, knowing which direction is better."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from llamatelemetry.bench.records import TestResult
from llamatelemetry.bench.report import BenchmarkReport

__all__ = ["Comparison", "compare_reports", "environment_differences", "DEFAULT_METRICS", "METRIC_DIRECTIONS"]

Better = Literal["lower", "higher"]

#: Which direction is better for each comparable figure (latency lower, throughput higher).
METRIC_DIRECTIONS: dict[str, Better] = {
    "ttft_ms": "lower", "itl_ms": "lower", "tpot_ms": "lower", "e2e_ms": "lower", "server_prompt_ms": "lower",
    "schedule_lag_ms": "lower", "prefill_tps": "higher", "decode_tps": "higher",
    "throughput.requests_per_s": "higher", "throughput.output_tokens_per_s": "higher",
    "throughput.input_tokens_per_s": "higher", "error_rate": "lower",
    "gpu.joules_per_output_token": "lower", "gpu.peak_memory_used_bytes": "lower",
}

#: What ``compare_reports`` checks unless told otherwise.
DEFAULT_METRICS: tuple[str, ...] = (
    "ttft_ms.p50", "ttft_ms.p90", "ttft_ms.p99", "itl_ms.p50", "itl_ms.p99", "tpot_ms.p50", "tpot_ms.p90",
    "e2e_ms.p50", "e2e_ms.p90", "e2e_ms.p99", "decode_tps.p50", "prefill_tps.p50",
    "throughput.requests_per_s", "throughput.output_tokens_per_s", "error_rate",
    "gpu.joules_per_output_token", "gpu.peak_memory_used_bytes",
)


@attrs.frozen
class Comparison:
    """One metric of one test in two reports.

    ``delta_pct`` is ``(current - baseline) / baseline * 100`` (``None`` when the baseline is 0 or
    a side lacks the figure); ``regression`` is true when the change is worse than the threshold
    in the metric's bad direction, or when the test disappeared from the current report.

    Example::

        for c in compare_reports("base.json", "new.json", 10.0):
            print(c.test_name, c.metric, c.delta_pct, c.regression)
    """

    test_name: str
    metric: str
    baseline: float | None
    current: float | None
    delta_pct: float | None
    regression: bool
    better: Better | None
    note: str = ""

    @property
    def improved(self) -> bool:
        """Whether the change goes in the better direction (any amount)."""
        if self.baseline is None or self.current is None or self.better is None or self.current == self.baseline:
            return False
        return (self.current < self.baseline) == (self.better == "lower")


def _as_report(value: BenchmarkReport | Mapping[str, Any] | str, which: str) -> BenchmarkReport:
    if isinstance(value, BenchmarkReport):
        return value
    if isinstance(value, Mapping):
        return BenchmarkReport.from_dict(value, source=f"the {which} report")
    if isinstance(value, str):
        return BenchmarkReport.load(value)
    raise TypeError(f"{which} must be a BenchmarkReport, its dict form or a path, not {type(value).__name__}")


def metric_value(test: TestResult, metric: str) -> float | None:
    """A test's figure by metric name: ``ttft_ms.p99``, ``throughput.output_tokens_per_s``, ``error_rate``."""
    summary = test.summary
    if metric == "error_rate":
        return summary.error_rate
    group, _, stat = metric.partition(".")
    if group == "throughput":
        value = getattr(summary, stat, None)
        return float(value) if isinstance(value, (int, float)) else None
    if group == "gpu":
        if summary.gpu is None:
            return None
        if stat == "peak_memory_used_bytes":
            peaks = [p for p in summary.gpu.peak_memory_used_bytes if p is not None]
            return float(sum(peaks)) if peaks else None
        value = getattr(summary.gpu, stat, None)
        return float(value) if isinstance(value, (int, float)) else None
    distribution = summary.metrics.get(group)
    if distribution is None:
        return None
    return distribution.get(stat or "p50")


def _direction(metric: str) -> Better | None:
    return METRIC_DIRECTIONS.get(metric) or METRIC_DIRECTIONS.get(metric.partition(".")[0])


def _compare(test_name: str, metric: str, base: float | None, now: float | None, threshold: float) -> Comparison:
    better = _direction(metric)
    if base is None or now is None:
        note = "not measured in either report" if base is None and now is None else (
            "not measured in the baseline" if base is None else "not measured in the current report")
        return Comparison(test_name, metric, base, now, None, False, better, note)
    if base == 0:
        # No percentage of zero: any worsening from a perfect 0 (errors, lag) is a regression.
        worse = (now > 0) if better == "lower" else False
        return Comparison(test_name, metric, base, now, None if now else 0.0, worse, better,
                          "baseline is 0" if now else "")
    delta = (now - base) / abs(base) * 100.0
    if better == "lower":
        regression = delta > threshold
    elif better == "higher":
        regression = -delta > threshold
    else:
        regression = False
    return Comparison(test_name, metric, base, now, round(delta, 3), regression, better)


def compare_reports(
    baseline: BenchmarkReport | Mapping[str, Any] | str,
    current: BenchmarkReport | Mapping[str, Any] | str,
    regression_threshold_pct: float = 10.0,
    *,
    metrics: Sequence[str] | None = None,
) -> list[Comparison]:
    """Compare every test of ``baseline`` with the same-named test of ``current``, metric by metric.

    Reports may be ``BenchmarkReport`` objects, their dict form (``report.to_dict()`` or the JSON
    file loaded) or paths. Latencies regress when they rise by more than
    ``regression_threshold_pct`` percent, throughputs when they fall by more; ``error_rate``
    regresses on any rise from 0. A test missing from ``current`` is a regression.
    """
    if regression_threshold_pct < 0:
        raise ValueError(f"regression_threshold_pct={regression_threshold_pct} must be >= 0")
    base_report = _as_report(baseline, "baseline")
    current_report = _as_report(current, "current")
    chosen = tuple(metrics) if metrics is not None else DEFAULT_METRICS
    for metric in chosen:
        if metric != "error_rate" and _direction(metric) is None:
            raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(DEFAULT_METRICS)} "
                             "(any of mean, p50, p90, p99, min, max after a distribution name)")
    by_name = {t.name: t for t in current_report.tests}
    comparisons: list[Comparison] = []
    for test in base_report.tests:
        now_test = by_name.get(test.name)
        if now_test is None:
            comparisons.append(Comparison(test.name, "test", None, None, None, True, None,
                                          "the test is missing from the current report"))
            continue
        for metric in chosen:
            base_value = metric_value(test, metric)
            now_value = metric_value(now_test, metric)
            if base_value is None and now_value is None and metric.startswith("gpu."):
                continue  # no GPU on either side: nothing to say
            comparisons.append(_compare(test.name, metric, base_value, now_value, regression_threshold_pct))
    return comparisons


def environment_differences(baseline: BenchmarkReport, current: BenchmarkReport) -> list[str]:
    """What differs between the two reports' environments in ways that change results (model, server, GPU, CPU)."""

    def pick(report: BenchmarkReport, *path: str) -> Any:
        value: Any = report.environment
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    checks = (
        ("model sha256", ("model", "sha256")), ("model", ("model", "name")),
        ("server build", ("server", "build_info")), ("server slots", ("server", "total_slots")),
        ("GPU", ("gpu", "devices")), ("GPU driver", ("gpu", "driver_version")), ("CPU", ("cpu", "model")),
        ("llamatelemetry", ("libraries", "llamatelemetry-core")),
    )
    differences = []
    for label, path in checks:
        before, after = pick(baseline, *path), pick(current, *path)
        if before is not None and after is not None and before != after:
            differences.append(f"{label}: {before} -> {after}")
    for key in ("n_tokens", "cache_prompt", "ignore_eos", "operation", "prompt_set"):
        before, after = baseline.config.get(key), current.config.get(key)
        if before != after and key in baseline.config and key in current.config:
            differences.append(f"config {key}: {before} -> {after}")
    return differences
