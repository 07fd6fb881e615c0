"""The demo's trace in a real trace viewer: ``llamatelemetry demo --tiny --viewer`` run as a user runs it.

One Phoenix for the module (it takes about 20 s to start): the demo starts it, runs a real llama.cpp
inference (xllamacpp on a generated tiny model) with the trace going to Phoenix over OTLP/gRPC, prints
the UI's URL and waits for Ctrl-C. The tests read the trace back over Phoenix's REST API, as the UI
shows it, then stop the demo with SIGINT.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

PROJECT = "llamatelemetry-demo"
MAX_TOKENS = 8


@attrs.define
class DemoRun:
    """The running demo: its process, what it printed so far, the Phoenix it started and its telemetry file."""

    process: subprocess.Popen[str]
    lines: list[str]
    url: str
    jsonl: Path

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.loads(response.read())

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def _reader(stream: Any, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """``llamatelemetry demo --tiny --viewer`` on a free UI port, up until its "press Ctrl-C" line."""
    folder = tmp_path_factory.mktemp("viewer-demo")
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with closing(socket.socket()) as sock:  # not 4317: a developer's own collector may hold it
        sock.bind(("127.0.0.1", 0))
        grpc_port = int(sock.getsockname()[1])
    jsonl = folder / "demo.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "llamatelemetry", "demo", "--tiny", "--max-tokens", str(MAX_TOKENS), "--viewer",
         "--viewer-port", str(port),
         "--viewer-grpc-port", str(grpc_port), "--output", str(jsonl)],
        cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 180
    try:
        while not any("press Ctrl-C" in line for line in seen):
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                pytest.fail("the demo printed no Phoenix URL within 180 s:\n" + "".join(seen))
            if line is None:
                pytest.fail(f"the demo exited with {process.wait()} before showing Phoenix:\n" + "".join(seen))
            seen.append(line)
        url_line = next(line for line in seen if line.startswith("Phoenix: open "))
        url = url_line.split()[2].split("/projects/")[0]
        yield DemoRun(process=process, lines=seen, url=url, jsonl=jsonl)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        while (line := lines.get(timeout=10)) is not None:
            seen.append(line)


def _spans(demo: DemoRun, count: int) -> list[dict[str, Any]]:
    """The project's spans from Phoenix's REST API, once ``count`` are stored (it inserts in batches)."""
    deadline = time.monotonic() + 30
    while True:
        spans: list[dict[str, Any]] = demo.get_json(f"/v1/projects/{PROJECT}/spans?limit=100")["data"]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.3)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


EXPECTED = {"llamatelemetry demo", "llama.cpp server start", "chat tiny-llama", "llama_cpp.prefill",
            "llama_cpp.decode"}


def test_the_url_is_phoenix_on_the_asked_port_with_the_demo_project(demo: DemoRun) -> None:
    assert demo.url.startswith("http://127.0.0.1:")
    printed = next(line for line in demo.lines if line.startswith("Phoenix: open "))
    projects = {p["name"]: p["id"] for p in demo.get_json("/v1/projects")["data"]}
    # The printed link opens the demo's project page, which the UI serves.
    assert PROJECT in projects and f"{demo.url}/projects/{projects[PROJECT]}" in printed
    with urllib.request.urlopen(f"{demo.url}/projects/{projects[PROJECT]}", timeout=10) as page:
        assert page.status == 200 and "<html" in page.read().decode().lower()


def test_phoenix_shows_the_demo_trace_tree(demo: DemoRun) -> None:
    spans = _spans(demo, len(EXPECTED))
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == EXPECTED and len(spans) == len(EXPECTED)
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    root = by_name["llamatelemetry demo"]
    chat = by_name["chat tiny-llama"]
    assert root["parent_id"] is None
    parent = {s["name"]: s["parent_id"] for s in spans}
    root_id, chat_id = root["context"]["span_id"], chat["context"]["span_id"]
    assert parent["llama.cpp server start"] == root_id and parent["chat tiny-llama"] == root_id
    assert parent["llama_cpp.prefill"] == chat_id and parent["llama_cpp.decode"] == chat_id
    # The waterfall: server start, then the request; prefill then decode, inside the request.
    prefill, decode = by_name["llama_cpp.prefill"], by_name["llama_cpp.decode"]
    assert _time(by_name["llama.cpp server start"]["end_time"]) <= _time(chat["start_time"])
    assert _time(chat["start_time"]) <= _time(prefill["start_time"]) <= _time(prefill["end_time"])
    assert _time(prefill["end_time"]) <= _time(decode["start_time"]) <= _time(decode["end_time"])
    assert _time(decode["end_time"]) <= _time(chat["end_time"]) <= _time(root["end_time"])
    assert all(s["status_code"] != "ERROR" for s in spans)


def test_phoenix_sees_the_spans_the_process_recorded(demo: DemoRun) -> None:
    """The same ids and parents as the demo's own JSON-lines file: nothing lost or re-parented on the way."""
    spans = _spans(demo, len(EXPECTED))
    recorded = [json.loads(line) for line in demo.jsonl.read_text().splitlines() if line.strip()]
    recorded = [r for r in recorded if r.get("signal") == "span"]
    from_file = {r["context"]["span_id"].removeprefix("0x"): (r["name"], (r["parent_id"] or "").removeprefix("0x"))
                 for r in recorded}
    in_phoenix = {s["context"]["span_id"]: (s["name"], s["parent_id"] or "") for s in spans}
    assert in_phoenix == from_file
    kinds = {r["name"]: r["kind"] for r in recorded}
    # A request over HTTP to llama.cpp's server is a CLIENT span; its phases and the demo's steps are INTERNAL.
    assert kinds["chat tiny-llama"] == "SpanKind.CLIENT"
    assert {kinds[name] for name in EXPECTED - {"chat tiny-llama"}} == {"SpanKind.INTERNAL"}


def test_phoenix_reads_the_genai_attributes_and_token_counts(demo: DemoRun) -> None:
    spans = {s["name"]: s for s in _spans(demo, len(EXPECTED))}
    chat = spans["chat tiny-llama"]
    # Phoenix maps the GenAI conventions onto its own: the request is an LLM span, the rest are not, so its
    # token and cost views count this one call once (not again for its phases or the workflow).
    assert chat["span_kind"] == "LLM"
    assert all(s["span_kind"] != "LLM" for name, s in spans.items() if name != "chat tiny-llama")
    a = chat["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "llama_cpp"
    assert a["gen_ai.request.model"] == "tiny-llama" and a["gen_ai.response.model"] == "tiny-llama"
    assert a["gen_ai.request.max_tokens"] == MAX_TOKENS and a["gen_ai.request.temperature"] == 0.0
    assert a["gen_ai.request.seed"] == 7 and a["gen_ai.response.finish_reasons"] == ["length"]
    assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < 60
    # Token counts: ours, and the columns Phoenix derives from them for its UI.
    output_tokens, input_tokens = a["gen_ai.usage.output_tokens"], a["gen_ai.usage.input_tokens"]
    assert output_tokens == MAX_TOKENS and input_tokens > 0
    assert a["llm.token_count.completion"] == output_tokens and a["llm.token_count.prompt"] == input_tokens
    assert a["llm.token_count.total"] == input_tokens + output_tokens
    assert a["llm.model_name"] == "tiny-llama" and a["llm.system"] == "llama_cpp"
    # The same figures the demo printed in its span tree.
    assert any(f"in={input_tokens} out={output_tokens}" in line for line in demo.lines)
    # The server's own timings ride along as attributes, agreeing with the usage counts.
    assert a["llamatelemetry.llama_cpp.timings.prompt_n"] + a["llamatelemetry.llama_cpp.timings.cache_n"] \
        == input_tokens
    assert a["llamatelemetry.llama_cpp.timings.predicted_n"] == output_tokens
    # Content capture is off by default: no prompt or completion text reached the viewer.
    assert not {"gen_ai.input.messages", "gen_ai.output.messages", "input.value"} & set(a)


def test_phoenix_ui_shows_the_trace_tree_and_tokens_counted_once(demo: DemoRun, chromium_executable: str) -> None:
    """The printed link in headless Chromium: the trace's row, then its tree, as a person clicks through."""
    from playwright.sync_api import sync_playwright

    chat = {s["name"]: s for s in _spans(demo, len(EXPECTED))}["chat tiny-llama"]["attributes"]
    total = chat["gen_ai.usage.input_tokens"] + chat["gen_ai.usage.output_tokens"]
    printed = next(line for line in demo.lines if line.startswith("Phoenix: open "))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(printed.split()[2])
            # The project's root spans: one trace, its cumulative tokens those of its one LLM call.
            row = page.get_by_role("row").filter(has_text="llamatelemetry demo").first
            row.wait_for(timeout=60_000)
            cells = [c.strip() for c in row.inner_text().split("\n") if c.strip()]
            assert str(total) in cells, cells
            page.get_by_text("llamatelemetry demo", exact=True).first.click()
            page.get_by_text("llama_cpp.decode", exact=True).first.wait_for(timeout=60_000)
            # The tree: the column under its search box (the table behind and the details pane show names too).
            # The panel renders and settles in steps: look again until every name is in it, for up to 30 s.
            names = ("llamatelemetry demo", "llama.cpp server start", "chat tiny-llama", "llama_cpp.prefill",
                     "llama_cpp.decode")
            boxes: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while True:
                search = page.get_by_placeholder("Search trace").bounding_box()
                boxes = {}
                for name in names if search is not None else ():
                    found = [box for box in (e.bounding_box() for e in page.get_by_text(name, exact=True).all())
                             if box is not None and box["y"] > search["y"]
                             and search["x"] - 40 <= box["x"] <= search["x"] + search["width"]]
                    if found:
                        # The topmost: the trace table's own row for the root lies further down, under the tree.
                        boxes[name] = min(found, key=lambda box: box["y"])
                if len(boxes) == len(names) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(250)
            assert set(boxes) == set(names), f"not in the trace tree after 30 s: {set(names) - set(boxes)}"
        finally:
            browser.close()
    # The tree reads top to bottom in time order, each child indented under its parent.
    order = sorted(boxes, key=lambda name: boxes[name]["y"])
    assert order == ["llamatelemetry demo", "llama.cpp server start", "chat tiny-llama", "llama_cpp.prefill",
                     "llama_cpp.decode"]
    x = {name: box["x"] for name, box in boxes.items()}
    assert x["llamatelemetry demo"] + 5 < x["chat tiny-llama"] and x["chat tiny-llama"] + 5 < x["llama_cpp.prefill"]
    assert x["llama.cpp server start"] == pytest.approx(x["chat tiny-llama"], abs=1)
    assert x["llama_cpp.decode"] == pytest.approx(x["llama_cpp.prefill"], abs=1)


def test_ctrl_c_stops_the_demo_and_phoenix(demo: DemoRun) -> None:
    assert demo.process.poll() is None
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", demo.port)) != 0:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"Phoenix still listens on {demo.url} after the demo stopped")
