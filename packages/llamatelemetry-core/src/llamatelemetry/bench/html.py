"""``render_html``: a self-contained HTML page of a report (inline SVG; no JavaScript, no network)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from llamatelemetry.bench.records import TestResult
from llamatelemetry.bench.render import TABLE_ROWS, server_figure_lines, server_header
from llamatelemetry.bench.report import BenchmarkReport
from llamatelemetry.bench.stats import Distribution

__all__ = ["render_html", "OVERVIEW_METRICS", "OVERVIEW_PERCENTILES"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_W, _H = 560, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 44


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


class _Chart:
    """One SVG chart with linear or log-10 x, linear y, axes and a legend."""

    def __init__(self, title: str, x_label: str, y_label: str, x_range: tuple[float, float],
                 y_range: tuple[float, float], *, log_x: bool = False) -> None:
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.log_x = log_x
        low, high = x_range
        if log_x:
            low, high = math.log10(max(low, 1e-6)), math.log10(max(high, low * 10 if low > 0 else 1e-5))
        self.x_low, self.x_high = low, high if high > low else low + 1.0
        self.y_low, self.y_high = y_range[0], y_range[1] if y_range[1] > y_range[0] else y_range[0] + 1.0
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []
        #: Top-left suits a CDF (the area above the curve is empty there); top-right the rest.
        self.legend_left = False

    def x(self, value: float) -> float:
        v = math.log10(max(value, 1e-9)) if self.log_x else value
        return _LEFT + (v - self.x_low) / (self.x_high - self.x_low) * (_W - _LEFT - _RIGHT)

    def y(self, value: float) -> float:
        return _H - _BOTTOM - (value - self.y_low) / (self.y_high - self.y_low) * (_H - _TOP - _BOTTOM)

    def polyline(self, points: Sequence[tuple[float, float]], color: str, label: str) -> None:
        path = " ".join(f"{self.x(px):.1f},{self.y(py):.1f}" for px, py in points)
        self.parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8" '
                          f'points="{path}"/>')
        self.legend.append((label, color))

    def dots(self, points: Sequence[tuple[float, float]], color: str, label: str) -> None:
        self.parts += [f'<circle class="series" cx="{self.x(px):.1f}" cy="{self.y(py):.1f}" r="2.4" fill="{color}" '
                       f'fill-opacity="0.7"/>' for px, py in points]
        self.legend.append((label, color))

    def bar(self, x0: float, x1: float, value: float, color: str, text: str) -> None:
        top, base = self.y(value), self.y(self.y_low)
        self.parts.append(f'<rect class="series" x="{self.x(x0):.1f}" y="{top:.1f}" '
                          f'width="{self.x(x1) - self.x(x0):.1f}" height="{max(base - top, 0):.1f}" fill="{color}"/>')
        self.parts.append(f'<text class="bar-value" x="{(self.x(x0) + self.x(x1)) / 2:.1f}" y="{top - 4:.1f}" '
                          f'font-size="10" text-anchor="middle">{_esc(text)}</text>')

    def _x_ticks(self) -> list[tuple[float, str]]:
        if self.log_x:
            return [(10.0 ** e, _fmt(10.0 ** e)) for e in range(math.ceil(self.x_low), math.floor(self.x_high) + 1)]
        return [(t, _fmt(t)) for t in _nice_ticks(self.x_low, self.x_high)]

    def svg(self, x_ticks: Sequence[tuple[float, str]] | None = None) -> str:
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
               f'role="img" aria-label="{_esc(self.title)}">',
               f'<text class="chart-title" x="{_W / 2}" y="16" font-size="13" font-weight="bold" '
               f'text-anchor="middle">{_esc(self.title)}</text>']
        x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _TOP, _H - _BOTTOM
        out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#999"/>')
        for value, label in (x_ticks if x_ticks is not None else self._x_ticks()):
            px = self.x(value)
            if x0 - 0.5 <= px <= x1 + 0.5:
                out.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y1}" stroke="#eee"/>')
                out.append(f'<text class="x-tick" x="{px:.1f}" y="{y1 + 14}" font-size="10" '
                           f'text-anchor="middle">{_esc(label)}</text>')
        for value in _nice_ticks(self.y_low, self.y_high):
            py = self.y(value)
            out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#eee"/>')
            out.append(f'<text class="y-tick" x="{x0 - 4}" y="{py + 3:.1f}" font-size="10" '
                       f'text-anchor="end">{_fmt(value)}</text>')
        out.append(f'<text class="x-label" x="{(x0 + x1) / 2}" y="{_H - 8}" font-size="11" text-anchor="middle">'
                   f'{_esc(self.x_label)}</text>')
        out.append(f'<text class="y-label" x="14" y="{(y0 + y1) / 2}" font-size="11" text-anchor="middle" '
                   f'transform="rotate(-90 14 {(y0 + y1) / 2})">{_esc(self.y_label)}</text>')
        out += self.parts
        lx = x0 + 8 if self.legend_left else x1 - 150
        if self.legend:
            # A white panel under the legend keeps it readable where a curve runs behind it.
            out.append(f'<rect x="{lx - 4}" y="{y0 + 2}" width="146" height="{len(self.legend) * 14 + 6}" '
                       'fill="white" fill-opacity="0.85" stroke="#ddd"/>')
        for index, (label, color) in enumerate(self.legend):
            ly = y0 + 12 + index * 14
            out.append(f'<rect class="legend-swatch" x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
            out.append(f'<text class="legend-label" x="{lx + 14}" y="{ly + 1}" font-size="10">{_esc(label)}</text>')
        out.append("</svg>")
        return "\n".join(out)


def _values(test: TestResult, metric: str) -> list[float]:
    done = [r for r in test.requests if r.ok]
    if metric == "itl_ms":
        return sorted(g for r in done for g in r.gaps_ms)
    values = (getattr(r, metric) for r in done)
    return sorted(float(v) for v in values if v is not None)


def _cdf_chart(report: BenchmarkReport, metric: str, title: str) -> str | None:
    series = [(t.name, _values(t, metric)) for t in report.tests]
    series = [(name, values) for name, values in series if values]
    if not series:
        return None
    low = min(v[0] for _, v in series)
    high = max(v[-1] for _, v in series)
    log_x = low > 0 and high / low > 50
    chart = _Chart(f"{title}: cumulative distribution", f"{title} ({'ms, log scale' if log_x else 'ms'})",
                   "% of values at or below", (low if log_x else 0.0, high), (0.0, 100.0), log_x=log_x)
    chart.legend_left = True
    for index, (name, values) in enumerate(series):
        n = len(values)
        # A step line: at each value the share jumps; thinned to at most 400 points per series.
        stride = max(1, n // 400)
        points = [(values[0], 0.0)]
        for i in range(0, n, stride):
            points += [(values[i], i / n * 100), (values[i], (i + 1) / n * 100)]
        points.append((values[-1], 100.0))
        chart.polyline(points, _COLORS[index % len(_COLORS)], f"{name} (n={n})")
    return chart.svg()


def _throughput_chart(report: BenchmarkReport, attribute: str, title: str, unit: str) -> str | None:
    bars = [(t.name, getattr(t.summary, attribute)) for t in report.tests]
    bars = [(name, float(value)) for name, value in bars if value is not None]
    if not bars:
        return None
    chart = _Chart(title, "test", unit, (0.0, float(len(bars))), (0.0, max(v for _, v in bars) * 1.15))
    for index, (_name, value) in enumerate(bars):
        chart.bar(index + 0.15, index + 0.85, value, _COLORS[index % len(_COLORS)], _fmt(value))
    ticks = [(index + 0.5, name) for index, (name, _) in enumerate(bars)]
    return chart.svg(ticks)


def _timeline_chart(report: BenchmarkReport) -> str | None:
    series = [(t.name, [(r.sent_s, r.ttft_ms) for r in t.requests if r.ok and r.ttft_ms is not None])
              for t in report.tests]
    series = [(name, points) for name, points in series if points]
    if not series:
        return None
    high_x = max(p[0] for _, points in series for p in points)
    high_y = max(p[1] for _, points in series for p in points)
    chart = _Chart("TTFT of each request over the run", "request sent at (s from test start)", "TTFT (ms)",
                   (0.0, high_x * 1.02 or 1.0), (0.0, high_y * 1.1))
    for index, (name, points) in enumerate(series):
        chart.dots([(x, y) for x, y in points if y is not None], _COLORS[index % len(_COLORS)], name)
    return chart.svg()


def _summary_table(test: TestResult) -> str:
    s = test.summary
    rows = []
    for key, label, decimals in TABLE_ROWS:
        d = s.metrics.get(key)
        if d is None or d.count == 0:
            continue
        cells = "".join(f"<td>{'-' if d.get(stat) is None else f'{d.get(stat):,.{decimals}f}'}</td>"
                        for stat in Distribution.STATS)
        rows.append(f"<tr><th>{_esc(label)}</th>{cells}<td>{d.count}</td></tr>")
    head = "".join(f"<th>{stat}</th>" for stat in (*Distribution.STATS, "n"))
    errors = ", ".join(f"{_esc(k)} &times;{v}" for k, v in s.errors.items()) or "none"
    rps = "-" if s.requests_per_s is None else f"{s.requests_per_s:,.2f}"
    tps = "-" if s.output_tokens_per_s is None else f"{s.output_tokens_per_s:,.1f}"
    server = ""
    if s.server is not None and s.server.figures:
        source = f" ({_esc(s.server.source)})" if s.server.source else ""
        server = f"<p>server{source}: {_esc(', '.join(server_figure_lines(s.server)))}</p>"
    return (f"<h3>{_esc(test.name)}</h3><p>{s.completed} ok, {s.failed} failed, {s.warmup_requests} warm-up excluded, "
            f"{s.duration_s:.2f} s; {rps} requests/s, {tps} output tokens/s; at most {s.max_in_flight} in flight, "
            f"{s.max_decoding_at_once} streaming at once; errors: {errors}</p>{server}"
            f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>")


#: The overview table's latency columns: summary metric, heading, decimals; each shows p50, p90 and p99.
OVERVIEW_METRICS: tuple[tuple[str, str, int], ...] = (
    ("ttft_ms", "TTFT (ms)", 1),
    ("tpot_ms", "time per output token (ms)", 2),
    ("e2e_ms", "end-to-end latency (ms)", 1),
)
OVERVIEW_PERCENTILES: tuple[str, ...] = ("p50", "p90", "p99")


def _overview_table(report: BenchmarkReport) -> str:
    """One row per test: p50/p90/p99 of TTFT, TPOT and latency, throughput and failures, above the charts."""
    top = "".join(f'<th colspan="{len(OVERVIEW_PERCENTILES)}" scope="colgroup">{_esc(label)}</th>'
                  for _, label, _ in OVERVIEW_METRICS)
    sub = "".join(f'<th scope="col">{stat}</th>' for _ in OVERVIEW_METRICS for stat in OVERVIEW_PERCENTILES)
    rows = []
    for test in report.tests:
        s = test.summary
        cells = []
        for key, _, decimals in OVERVIEW_METRICS:
            d = s.metrics.get(key)
            for stat in OVERVIEW_PERCENTILES:
                value = None if d is None or d.count == 0 else d.get(stat)
                cells.append(f"<td>{'-' if value is None else f'{value:,.{decimals}f}'}</td>")
        tps = "-" if s.output_tokens_per_s is None else f"{s.output_tokens_per_s:,.1f}"
        rps = "-" if s.requests_per_s is None else f"{s.requests_per_s:,.2f}"
        rows.append(f'<tr><th scope="row">{_esc(test.name)}</th>{"".join(cells)}<td>{tps}</td><td>{rps}</td>'
                    f"<td>{s.completed}</td><td>{s.failed}</td></tr>")
    return (f'<table id="overview"><caption>Summary: percentiles per test (warm-up excluded)</caption>'
            f'<thead><tr><th rowspan="2" scope="col">test</th>{top}<th rowspan="2" scope="col">output tokens/s</th>'
            f'<th rowspan="2" scope="col">requests/s</th><th rowspan="2" scope="col">ok</th>'
            f'<th rowspan="2" scope="col">failed</th></tr><tr>{sub}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_html(report: BenchmarkReport) -> str:
    """The report as one HTML page: a p50/p90/p99 summary, CDFs, throughput bars, a TTFT timeline, per-test tables."""
    env = report.environment
    model = (env.get("model") or {}).get("name", "?")
    server = f"; {_esc(server_header(env['server']))}" if env.get("server") else ""
    charts = [
        _cdf_chart(report, "ttft_ms", "Time to first token"),
        _cdf_chart(report, "itl_ms", "Gap between chunks"),
        _cdf_chart(report, "tpot_ms", "Time per output token"),
        _cdf_chart(report, "e2e_ms", "End-to-end latency"),
        _throughput_chart(report, "output_tokens_per_s", "Output throughput", "tokens/s"),
        _throughput_chart(report, "requests_per_s", "Request throughput", "requests/s"),
        _timeline_chart(report),
    ]
    figures = "\n".join(f"<figure>{c}</figure>" for c in charts if c is not None)
    tables = "\n".join(_summary_table(t) for t in report.tests)
    config = report.config
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{_esc(report.name)}: llamatelemetry benchmark</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
figure {{ display: inline-block; margin: 8px; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }}
th:first-child {{ text-align: left; }}
#overview {{ margin: 8px 8px 16px; }}
#overview caption {{ text-align: left; font-weight: bold; padding-bottom: 4px; }}
#overview thead th {{ text-align: center; border-bottom: 1px solid #ccc; }}
#overview tbody th {{ text-align: left; }}
</style></head><body>
<h1>{_esc(report.name)}</h1>
<p>model <b>{_esc(model)}</b>{server}; {_esc(config.get("n_tokens"))} output tokens per request; prompts
{_esc(config.get("prompt_set"))}; cache_prompt={_esc(config.get("cache_prompt"))}; seed {_esc(config.get("seed"))};
created {_esc(report.created_at)}</p>
{_overview_table(report)}
{figures}
{tables}
</body></html>
"""
