"""``llamatelemetry bench``, ``compare`` and ``doctor`` run as a user runs them: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return subprocess.run([sys.executable, "-m", "llamatelemetry", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def base_report(bench_server: Any,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """One real `bench` run against the shared server: its report, its HTML page and the process."""
    out = tmp_path_factory.mktemp("bench-cli")
    report, page = out / "base.json", out / "base.html"
    done = _cli("bench", "--url", bench_server.base_url, "-c", "1,2", "-n", "4", "--n-tokens", "16",
                "--output", str(report), "--plot", str(page), "--name", "cli")
    return report, page, done


def test_bench_prints_progress_and_a_results_table(base_report: Any) -> None:
    report, page, done = base_report
    assert done.returncode == 0, done.stderr
    assert "concurrency=1" in done.stdout and "concurrency=2" in done.stdout
    for row in ("TTFT (ms)", "inter-chunk gap (ms)", "time per output token (ms)", "end-to-end latency (ms)",
                "output tokens (usage)", "p50", "p99", "throughput:"):
        assert row in done.stdout
    # Progress goes to stderr (plain lines when not a terminal), never into the table on stdout.
    assert "4/4 requests" in done.stderr and "requests" not in done.stdout.split("\n")[0]
    data = json.loads(report.read_text())
    assert data["schema"] == "llamatelemetry.bench.report" and [t["name"] for t in data["tests"]] == [
        "concurrency=1", "concurrency=2"]
    html = page.read_text()
    assert html.count("<svg") >= 6 and "<script" not in html.lower()


def test_compare_is_a_ci_gate(base_report: Any, tmp_path: Path) -> None:
    report, _, done = base_report
    assert done.returncode == 0, done.stderr
    same = _cli("compare", str(report), str(report), "--threshold", "10")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 regression(s)" in same.stdout
    # A slower current report: TTFT p99 doubled and output throughput halved in one test.
    data = json.loads(report.read_text())
    summary = data["tests"][1]["summary"]
    summary["metrics"]["ttft_ms"]["p99"] *= 2
    summary["output_tokens_per_s"] /= 2
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(data))
    gate = _cli("compare", str(report), str(worse), "--threshold", "10")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    lines = [line for line in gate.stdout.splitlines() if "REGRESSION" in line]
    assert {line.split()[1] for line in lines} == {"ttft_ms.p99", "throughput.output_tokens_per_s"}
    assert all(line.split()[0] == "concurrency=2" for line in lines)
    as_json = _cli("compare", str(report), str(worse), "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["regressions"] == 2
    data["schema_version"] = 99
    future = tmp_path / "future.json"
    future.write_text(json.dumps(data))
    refused = _cli("compare", str(report), str(future))
    assert refused.returncode == 2 and "schema version 99" in refused.stderr


def test_bench_starts_its_own_tiny_server(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    pytest.importorskip("gguf")
    done = _cli("bench", "--tiny", "-c", "2", "-n", "4", "--n-tokens", "8", "-o", str(tmp_path / "tiny.json"), "-q")
    assert done.returncode == 0, done.stderr
    assert "model tiny-llama" in done.stdout and "4 ok, 0 failed" in done.stdout
    assert "requests, 0 failed" not in done.stderr  # -q: no progress
    env = json.loads((tmp_path / "tiny.json").read_text())["environment"]
    assert len(env["model"]["sha256"]) == 64 and env["server"]["total_slots"] == 2


def test_bench_usage_errors_are_clear(tmp_path: Path) -> None:
    missing = _cli("bench", "--url", "http://127.0.0.1:9", "--prompts", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2 and "Prompt file not found" in missing.stderr
    both = _cli("bench", "--url", "http://127.0.0.1:9", "-c", "1,2", "--rate", "3")
    assert both.returncode == 2 and "not both" in both.stderr


def test_doctor_reports_environment_plugins_and_server_kinds() -> None:
    done = _cli("doctor")
    assert done.returncode == 0, done.stderr
    for section in ("llamatelemetry", "libraries", "GPUs", "plugins", "backends: ", "llama.cpp servers: "):
        assert section in done.stdout
    assert "llamatelemetry-llamacpp" in done.stdout and "xllamacpp" in done.stdout
    info = json.loads(_cli("doctor", "--json").stdout)
    assert "llama.cpp" in info["backends"] and "xllamacpp" in info["llama_cpp_server_kinds"]
    assert any(p["distribution"] == "llamatelemetry-llamacpp" for p in info["plugins"])
