"""The ``llamatelemetry bench --plot`` page in a real browser: headless Chromium, driven by Playwright.

A real benchmark (``bench --tiny``: llama.cpp's own server on a generated tiny model, two tests)
writes the page; Chromium opens it from disk. Any JavaScript error, console error or network
request fails the test; every chart must have drawn its data, title, axis labels and legend inside
its frame, and the summary table at the top must carry each test's p50/p90/p99 from the JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from llamatelemetry.bench.html import OVERVIEW_METRICS, OVERVIEW_PERCENTILES

TESTS = ("concurrency=1", "concurrency=2")
#: Every chart the page draws for a streamed llama.cpp run, by title.
CHARTS = {
    "Time to first token: cumulative distribution": "legend",
    "Gap between chunks: cumulative distribution": "legend",
    "Time per output token: cumulative distribution": "legend",
    "End-to-end latency: cumulative distribution": "legend",
    "Output throughput": "bars",
    "Request throughput": "bars",
    "TTFT of each request over the run": "legend",
}


@pytest.fixture(scope="module")
def bench_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A real ``bench --tiny`` run's HTML page and its JSON report."""
    out = tmp_path_factory.mktemp("bench-page")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    done = subprocess.run(
        [sys.executable, "-m", "llamatelemetry", "bench", "--tiny", "-c", "1,2", "-n", "6", "--n-tokens", "8",
         "--output", str(out / "report.json"), "--plot", str(out / "report.html"), "--name", "browser"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "report.html", json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def browser(chromium_executable: str) -> Iterator[Browser]:
    """Headless Chromium (root needs --no-sandbox)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_executable, headless=True,
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def opened(browser: Browser, bench_page: tuple[Path, dict[str, Any]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Page, list[str], dict[str, Any]]]:
    """The page loaded in Chromium, with every JavaScript/console error and every request it made."""
    path, report = bench_page
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    url = path.resolve().as_uri()

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning", "assert"):
            problems.append(f"console {message.type}: {message.text}")

    def on_request(request: Request) -> None:
        if request.url != url:
            problems.append(f"request to {request.url} (the page must be self-contained)")

    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", on_console)
    page.on("request", on_request)
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok
    # Kept for a person to look at when the test fails.
    page.screenshot(path=str(tmp_path_factory.mktemp("bench-page-shot") / "report.png"), full_page=True)
    yield page, problems, report
    page.close()


#: Per chart: its title, labels, ticks, legend and data marks, with their boxes as Chromium laid them out.
_CHART_FACTS = """
() => [...document.querySelectorAll('figure > svg')].map(svg => {
  const frame = svg.getBoundingClientRect();
  const box = el => { const r = el.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const texts = cls => [...svg.querySelectorAll('.' + cls)].map(el => ({text: el.textContent.trim(), box: box(el)}));
  const series = [...svg.querySelectorAll('.series')].map(el => ({
    tag: el.tagName, box: box(el),
    points: el.tagName === 'polyline' ? el.points.numberOfItems : null,
    color: el.getAttribute('stroke') || el.getAttribute('fill'),
    height: el.tagName === 'rect' ? el.height.baseVal.value : null,
  }));
  const plot = box(svg.querySelector('rect'));
  return {
    frame: {x: frame.x, y: frame.y, w: frame.width, h: frame.height}, plot,
    title: texts('chart-title'), xLabel: texts('x-label'), yLabel: texts('y-label'),
    xTicks: texts('x-tick'), yTicks: texts('y-tick'), legend: texts('legend-label'),
    swatches: [...svg.querySelectorAll('.legend-swatch')].map(el => el.getAttribute('fill')),
    series,
    allText: [...svg.querySelectorAll('text')].map(el => ({text: el.textContent, box: box(el)})),
  };
})
"""


def _inside(inner: dict[str, float], outer: dict[str, float], slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["w"] <= outer["x"] + outer["w"] + slack
            and inner["y"] + inner["h"] <= outer["y"] + outer["h"] + slack)


def test_no_javascript_error_and_no_request(opened: tuple[Page, list[str], dict[str, Any]]) -> None:
    page, problems, _ = opened
    assert problems == []
    assert page.title() == "browser: llamatelemetry benchmark"
    # The fonts are there: text has width (a missing font stack renders nothing measurable).
    assert page.locator("h1").bounding_box()["width"] > 50  # type: ignore[index]


def test_every_chart_rendered_with_data_labels_and_legend(opened: tuple[Page, list[str], dict[str, Any]]) -> None:
    page, _, report = opened
    charts = page.evaluate(_CHART_FACTS)
    titles = [c["title"][0]["text"] for c in charts]
    assert sorted(titles) == sorted(CHARTS)
    counts = {t["name"]: t["summary"]["completed"] for t in report["tests"]}
    for chart in charts:
        title = chart["title"][0]["text"]
        where = f"chart {title!r}"
        assert chart["frame"]["w"] >= 500 and chart["frame"]["h"] >= 250, where
        # Titles and axis labels: present, non-empty, laid out with a size, none cut off by the SVG's edge.
        for key in ("title", "xLabel", "yLabel"):
            assert len(chart[key]) == 1 and chart[key][0]["text"], f"{where}: {key}"
        assert chart["yLabel"][0]["box"]["h"] > chart["yLabel"][0]["box"]["w"], f"{where}: y label is not vertical"
        assert len(chart["yTicks"]) >= 2 and len(chart["xTicks"]) >= 1, where
        for text in chart["allText"]:
            assert text["box"]["w"] > 0 and text["box"]["h"] > 0, f"{where}: {text['text']!r} has no size"
            assert _inside(text["box"], chart["frame"]), f"{where}: {text['text']!r} is cut off"
        # Data: every mark drawn inside the plot area.
        series = chart["series"]
        assert series, f"{where}: no data drawn"
        for mark in series:
            assert _inside(mark["box"], chart["plot"], slack=3.0), f"{where}: a {mark['tag']} leaves the plot"
        if CHARTS[title] == "bars":
            # One bar per test, each with a height, labelled by its test name on the x axis.
            assert [m["tag"] for m in series] == ["rect"] * len(TESTS), where
            assert all(m["height"] > 0 for m in series), where
            assert [t["text"] for t in chart["xTicks"]] == list(TESTS), where
            assert not chart["legend"], where
            continue
        # A legend entry per test, its swatch in the colour of that test's marks.
        legend = [entry["text"] for entry in chart["legend"]]
        assert [name.split(" (n=")[0] for name in legend] == list(TESTS), where
        assert len(set(chart["swatches"])) == len(TESTS), where
        assert {m["color"] for m in series} == set(chart["swatches"]), where
        if series[0]["tag"] == "polyline":
            # A CDF per test: a step line from 0 to 100 %, with at least two points per value.
            assert len(series) == len(TESTS), where
            for mark, name in zip(series, TESTS, strict=True):
                assert mark["points"] >= 4 and mark["box"]["h"] > 50, f"{where}: {name}'s line is empty"
            if title.startswith(("Time to first token", "End-to-end")):
                assert legend == [f"{name} (n={counts[name]})" for name in TESTS], where
        else:
            # The timeline: one dot per completed request.
            assert [m["tag"] for m in series] == ["circle"] * sum(counts.values()), where


def test_summary_table_is_at_the_top_with_each_tests_percentiles(
        opened: tuple[Page, list[str], dict[str, Any]]) -> None:
    page, _, report = opened
    table = page.locator("table#overview")
    assert table.count() == 1
    first_chart = page.locator("figure").first.bounding_box()
    box = table.bounding_box()
    assert box is not None and first_chart is not None and box["y"] + box["height"] <= first_chart["y"]
    assert page.locator("table").first.get_attribute("id") == "overview"
    assert table.locator("caption").inner_text().startswith("Summary: percentiles per test")
    heads = table.locator("thead tr").nth(1).locator("th").all_inner_texts()
    assert heads == list(OVERVIEW_PERCENTILES) * len(OVERVIEW_METRICS)
    rows = table.locator("tbody tr")
    assert rows.count() == len(report["tests"])
    for index, test in enumerate(report["tests"]):
        row = rows.nth(index)
        assert row.locator("th").inner_text() == test["name"]
        cells = [c.replace(",", "") for c in row.locator("td").all_inner_texts()]
        summary = test["summary"]
        expected = [(summary["metrics"][key][stat], decimals)
                    for key, _, decimals in OVERVIEW_METRICS for stat in OVERVIEW_PERCENTILES]
        for cell, (value, decimals) in zip(cells[:len(expected)], expected, strict=True):
            assert float(cell) == pytest.approx(value, abs=0.51 * 10 ** -decimals), (test["name"], cells)
        tail = cells[len(expected):]
        assert float(tail[0]) == pytest.approx(summary["output_tokens_per_s"], abs=0.06)
        assert float(tail[1]) == pytest.approx(summary["requests_per_s"], abs=0.006)
        assert tail[2:] == [str(summary["completed"]), str(summary["failed"])]
