"""The bench page's summary table, read without a browser (the main test run has none; see the Chromium test)."""

from __future__ import annotations

from html.parser import HTMLParser

from llamatelemetry.bench import BenchmarkReport, RequestRecord, TestResult
from llamatelemetry.bench.html import OVERVIEW_METRICS, OVERVIEW_PERCENTILES, render_html
from llamatelemetry.bench.records import summarize


class _Overview(HTMLParser):
    """The rows of ``table#overview`` (header and body cells as text), and where it starts in the page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.inside = False
        self.cell: list[str] | None = None
        self.table_at: int | None = None
        self.first_svg_at: int | None = None
        self.tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1
        if tag == "table" and ("id", "overview") in attrs:
            self.inside, self.table_at = True, self.tags
        elif tag == "svg" and self.first_svg_at is None:
            self.first_svg_at = self.tags
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("th", "td"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("th", "td") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _test(name: str, ttfts: list[float], *, failures: int = 0) -> TestResult:
    records = [RequestRecord(index=i, prompt_id=f"p{i}", ok=True, scheduled_s=i * 0.1, sent_s=i * 0.1, ttft_ms=t,
                             e2e_ms=t + 70.0, gaps_ms=[10.0] * 7, tokens_per_chunk=[1] * 8, chunks=8,
                             input_tokens=20, output_tokens=8, finish_reason="length")
               for i, t in enumerate(ttfts)]
    records += [RequestRecord(index=100 + i, prompt_id="x", ok=False, scheduled_s=0.5, sent_s=0.5, e2e_ms=3.0,
                              error_type="ServerTimeoutError") for i in range(failures)]
    return TestResult(name=name, mode="concurrency", concurrency=1, request_rate=None, started_at="2026-01-01",
                      requests=tuple(records), summary=summarize(records, warmup_requests=0))


def test_summary_table_comes_first_with_p50_p90_p99_per_test() -> None:
    fast = _test("concurrency=1", [float(v) for v in range(1, 101)])  # 1..100 ms: p50 50.5, p90 90.1, p99 99.01
    slow = _test("concurrency=4 <b>", [200.0] * 10, failures=2)
    page = render_html(BenchmarkReport(tests=(fast, slow), environment={"model": {"name": "tiny"}},
                                       config={"n_tokens": 8}, name="summary"))
    parsed = _Overview()
    parsed.feed(page)
    assert parsed.table_at is not None and parsed.first_svg_at is not None and parsed.table_at < parsed.first_svg_at
    top, sub, *body = parsed.rows
    assert top == ["test", *[label for _, label, _ in OVERVIEW_METRICS], "output tokens/s", "requests/s", "ok",
                   "failed"]
    assert sub == list(OVERVIEW_PERCENTILES) * len(OVERVIEW_METRICS)
    assert [row[0] for row in body] == ["concurrency=1", "concurrency=4 <b>"]  # a test name is text, not markup
    assert body[0][1:4] == ["50.5", "90.1", "99.0"]  # TTFT with one decimal
    assert body[0][7:10] == ["120.5", "160.1", "169.0"]  # end-to-end: TTFT + 70 ms
    assert body[1][1:4] == ["200.0", "200.0", "200.0"] and body[1][-2:] == ["10", "2"]
    assert body[0][-2:] == ["100", "0"]


def test_a_test_without_a_metric_shows_dashes() -> None:
    failed = _test("all failed", [], failures=3)
    parsed = _Overview()
    parsed.feed(render_html(BenchmarkReport(tests=(failed,), environment={}, config={}, name="none")))
    row = parsed.rows[2]
    assert row[0] == "all failed" and row[1:10] == ["-"] * 9 and row[-2:] == ["0", "3"]
