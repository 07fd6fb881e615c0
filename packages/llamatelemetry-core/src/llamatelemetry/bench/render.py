"""Plain-text views of a benchmark: the progress bar (stderr) and the results and comparison tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from llamatelemetry.bench.compare import Comparison
from llamatelemetry.bench.config import ProgressEvent
from llamatelemetry.bench.records import ServerFigures, TestResult
from llamatelemetry.bench.report import BenchmarkReport
from llamatelemetry.bench.stats import Distribution

__all__ = ["ProgressBar", "render_results", "render_comparisons", "server_figure_lines", "server_header", "TABLE_ROWS"]

#: Rows of the results table: metric name in the summary, label, and how many decimals to show.
TABLE_ROWS: tuple[tuple[str, str, int], ...] = (
    ("ttft_ms", "TTFT (ms)", 2),
    ("itl_ms", "inter-chunk gap (ms)", 3),
    ("tpot_ms", "time per output token (ms)", 3),
    ("e2e_ms", "end-to-end latency (ms)", 1),
    ("tokens_per_chunk", "tokens per chunk", 2),
    ("input_tokens", "input tokens", 1),
    ("cached_input_tokens", "cached input tokens", 1),
    ("output_tokens", "output tokens (usage)", 1),
    ("server_prompt_ms", "server prefill (ms)", 2),
    ("prefill_tps", "prefill (tokens/s, server)", 1),
    ("decode_tps", "decode (tokens/s, server)", 1),
    ("schedule_lag_ms", "schedule lag (ms)", 2),
)


class ProgressBar:
    """A progress callback that draws ``[#####.....] 12/40`` on a terminal (plain lines when not a terminal)."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 30, min_interval_s: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_quarter: dict[tuple[int, bool], int] = {}

    def __call__(self, event: ProgressEvent) -> None:
        """Draw ``event`` (throttled; the first and last event of a test are always drawn)."""
        now = time.monotonic()
        edge = event.finished or event.done == 0
        fraction = event.done / event.total if event.total else 1.0
        label = "warm-up" if event.warmup else event.test
        head = f"[{event.test_index + 1}/{event.tests}] {label:<18}"
        if self._tty:
            if not edge and now - self._last_draw < self.min_interval_s:
                return
            filled = int(self.width * fraction)
            bar = "#" * filled + "." * (self.width - filled)
            text = (f"\r{head} [{bar}] {event.done}/{event.total} requests, {event.failed} failed, "
                    f"{event.in_flight} in flight, {event.elapsed_s:6.1f} s")
            self.stream.write(text + ("\n" if event.finished else ""))
        else:
            # Not a terminal (CI logs): a line per quarter of a test, so the log shows progress without a flood.
            quarter = int(fraction * 4)
            key = (event.test_index, event.warmup)
            if event.warmup or quarter <= self._last_quarter.get(key, 0):
                return
            self._last_quarter[key] = quarter
            self.stream.write(f"{head} {event.done}/{event.total} requests, {event.failed} failed, "
                              f"{event.elapsed_s:.1f} s\n")
        self.stream.flush()
        self._last_draw = now


_MODES = {"concurrency": "closed loop", "rate": "open loop, Poisson arrivals", "sequential": "in-process, sequential"}


def _cell(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:,.{decimals}f}"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(row) if i > 0]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def _test_lines(test: TestResult) -> list[str]:
    s = test.summary
    lines = [f"{test.name} ({_MODES.get(test.mode, test.mode)}): {s.completed} ok, {s.failed} failed, "
             f"{s.warmup_requests} warm-up excluded, {s.duration_s:.2f} s"]
    lines.append(f"  throughput: {_cell(s.requests_per_s, 2)} requests/s, {_cell(s.output_tokens_per_s, 1)} output "
                 f"tokens/s, {_cell(s.input_tokens_per_s, 1)} input tokens/s")
    rows: list[list[str]] = [["metric", *Distribution.STATS, "n"]]
    for key, label, decimals in TABLE_ROWS:
        distribution = s.metrics.get(key)
        if distribution is None or distribution.count == 0:
            continue
        rows.append([label, *[_cell(distribution.get(stat), decimals) for stat in Distribution.STATS],
                     str(distribution.count)])
    lines += _table(rows)
    lines.append(f"  overlap: at most {s.max_in_flight} in flight, {s.max_decoding_at_once} streaming at once")
    if s.server is not None and s.server.figures:
        source = f" ({s.server.source})" if s.server.source else ""
        lines.append(f"  server{source}: " + ", ".join(server_figure_lines(s.server)))
    if s.total_cached_input_tokens:
        lines.append(f"  note: {s.total_cached_input_tokens} prompt tokens came from the server's prompt cache; "
                     "TTFT is lower than cold (use cache_prompt=False / --no-cache-prompt)")
    if s.usage_missing:
        lines.append(f"  note: {s.usage_missing} responses carried no usage; their output tokens are unknown")
    if s.gpu is not None:
        peaks = ", ".join("-" if p is None else f"{p / 2**20:,.0f} MiB" for p in s.gpu.peak_memory_used_bytes)
        energy = "-" if s.gpu.energy_joules is None else f"{s.gpu.energy_joules:,.1f} J"
        per_token = "-" if s.gpu.joules_per_output_token is None else f"{s.gpu.joules_per_output_token:.4f} J/token"
        lines.append(f"  GPU: {', '.join(s.gpu.devices)}; peak memory {peaks}; energy {energy} ({per_token})")
    if s.errors:
        lines.append("  errors: " + ", ".join(f"{name} x{count}" for name, count in s.errors.items()))
    return lines


def server_figure_lines(server: ServerFigures) -> list[str]:
    """Each server figure as ``label value unit`` (the driver chose the names, units and labels)."""
    return [f"{figure.label or name} {_number(figure.value)}{' ' + figure.unit if figure.unit else ''}"
            for name, figure in server.figures.items()]


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3g}" if abs(value) < 100 else f"{value:,.1f}"


def server_header(server: Mapping[str, Any]) -> str:
    """The server's line of a report header: its URL, and its driver's summary (build, slots) when there is one."""
    text = f"server {server.get('url', '?')}"
    return text + (f" ({server['summary']})" if server.get("summary") else "")


def render_results(report: BenchmarkReport) -> str:
    """The results table of every test, with throughput, overlap, cache, GPU and error lines."""
    env = report.environment
    model = env.get("model") or {}
    server = env.get("server") or {}
    header = f"benchmark {report.name!r}: model {model.get('name', '?')}"
    if server:
        header += ", " + server_header(server)
    config = report.config
    header += (f"\n  {config.get('n_tokens')} output tokens per request, prompts: {config.get('prompt_set')}, "
               f"cache_prompt={config.get('cache_prompt')}, ignore_eos={config.get('ignore_eos')}, "
               f"seed={config.get('seed')}")
    blocks = [header]
    for test in report.tests:
        blocks.append("\n".join(_test_lines(test)))
    return "\n\n".join(blocks)


def render_comparisons(comparisons: Sequence[Comparison], threshold_pct: float) -> str:
    """The comparison table; regressions are marked ``REGRESSION``."""
    rows: list[list[str]] = [["test", "metric", "baseline", "current", "delta", "verdict"]]
    for c in comparisons:
        delta = "-" if c.delta_pct is None else f"{c.delta_pct:+.1f}%"
        verdict = "REGRESSION" if c.regression else ("better" if c.improved else "ok")
        if c.note:
            verdict += f" ({c.note})"
        rows.append([c.test_name, c.metric, _cell(c.baseline, 3), _cell(c.current, 3), delta, verdict])
    regressions = sum(1 for c in comparisons if c.regression)
    lines = _table(rows, indent="")
    lines.append(f"\n{regressions} regression(s) beyond {threshold_pct:g}% "
                 f"(latency: higher is worse; throughput: lower is worse)")
    return "\n".join(lines)
