"""Load drivers are plugins: the engine-based fallback on a third-party backend, and a driver registered by a hook.

The backend is the example third-party plugin (examples/llamatelemetry-example-backend, an
OpenAI-compatible client) against the shared real llama.cpp server; it registers no load driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.bench import (
    BenchmarkReport,
    BenchmarkRunner,
    EngineLoadDriver,
    LoadRequest,
    RequestOutcome,
    ServerFigure,
    ServerFigures,
    builtin_prompts,
)
from llamatelemetry.bench.drivers import find_load_driver
from llamatelemetry.bench.render import render_results
from llamatelemetry.plugins import LoadDriverSpec, hookimpl
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

pytest.importorskip("llamatelemetry_example_backend", reason="pip install -e examples/llamatelemetry-example-backend")

SHORT = builtin_prompts("short")


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return subprocess.run([sys.executable, "-m", "llamatelemetry", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_drivers_are_found_by_backend_name_or_alias_in_any_case() -> None:
    for name in ("llama.cpp", "LLAMA.CPP", "llama_cpp", "LlamaCpp"):
        spec = find_load_driver(name)
        assert spec is not None and spec.name == "llama.cpp" and spec.distribution == "llamatelemetry-llamacpp"
    assert find_load_driver("example") is None and find_load_driver("openai-compatible") is None


def test_bench_backend_example_load_tests_it_with_concurrent_streams(bench_server: Any, tmp_path: Path) -> None:
    """``llamatelemetry bench --backend example``: no driver of its own, so one engine per stream, 3 at once."""
    out = tmp_path / "example.json"
    done = _cli("bench", "--backend", "example", "-O", f"base_url={bench_server.base_url}", "-c", "1,3", "-n", "6",
                "--n-tokens", "64", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "concurrency=1" in done.stdout and "concurrency=3" in done.stdout and "TTFT (ms)" in done.stdout
    report = BenchmarkReport.load(out)
    assert report.environment["backend"] == "example"
    assert report.environment["model"]["name"] == "tiny-bench"  # the backend's own model_name, from /v1/models
    assert report.config["backend_options"] == {"base_url": bench_server.base_url}
    one, three = report.test("concurrency=1"), report.test("concurrency=3")
    for test in (one, three):
        assert test.summary.completed == 6 and test.summary.failed == 0
        assert all(r.ttft_ms is not None and r.output_tokens for r in test.requests)
        assert test.summary.server is None  # an engine has no server counters to offer
    assert one.summary.max_in_flight == 1
    assert three.summary.max_in_flight == 3  # three engines, three threads, really at once
    assert three.summary.warmup_requests == 3


def test_engine_driver_spans_and_figures(bench_server: Any) -> None:
    runner = BenchmarkRunner(backend="example", backend_options={"base_url": bench_server.base_url}, gpu_monitor=None)
    assert isinstance(runner.driver(runner.config()), EngineLoadDriver)
    with InMemoryTelemetry() as telemetry:
        report = runner.run(prompts=SHORT, n_tokens=16, concurrency=2, num_requests=4, warmup=0)
        spans = telemetry.spans()
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    clients = [s for s in spans if s.kind.name == "CLIENT"]
    assert len(clients) == 4
    for client in clients:
        # The engine's GenAI span runs on a worker thread, yet nests under the harness's request span.
        assert client.parent is not None and by_id[client.parent.span_id].name == "benchmark request"
        assert (client.attributes or {})["gen_ai.provider.name"] == "openai_compatible"
    test = report.tests[0]
    traces = {format(s.context.trace_id, "032x") for s in clients if s.context is not None}
    assert {r.trace_id for r in test.requests} == traces
    assert test.summary.metrics["ttft_ms"].count == 4 and test.summary.metrics["e2e_ms"].count == 4


def test_an_open_loop_on_an_engine_is_capped_by_its_engines(bench_server: Any) -> None:
    notices: list[str] = []
    runner = BenchmarkRunner(backend="example", backend_options={"base_url": bench_server.base_url}, gpu_monitor=None,
                             notice=notices.append)
    report = runner.run(prompts=SHORT, n_tokens=8, request_rate=50.0, num_requests=8, warmup=0)
    test = report.tests[0]
    assert test.mode == "rate" and test.summary.completed == 8
    assert test.summary.max_in_flight <= 4 and any("at most 4 requests at once" in n for n in notices)


class CountingDriver(EngineLoadDriver):
    """A real driver: the engine driver plus a server figure of its own (the measured requests it sent)."""

    sent = 0

    async def test_started(self) -> None:
        self.sent = 0

    async def send(self, request: LoadRequest) -> RequestOutcome:
        if not request.warmup:
            self.sent += 1
        return await super().send(request)

    async def test_finished(self) -> ServerFigures | None:
        return ServerFigures(figures={"requests_sent": ServerFigure(value=self.sent, unit="requests",
                                                                    label="requests sent")}, source="counting driver")


def counting_factory(context: Any) -> CountingDriver:
    """A plain callable is a factory too."""
    return CountingDriver(context)


class CountingPlugin:
    @hookimpl
    def llamatelemetry_register_load_drivers(self) -> list[LoadDriverSpec]:
        return [LoadDriverSpec(name="counting", factory=f"{__name__}:counting_factory", backends=("EXAMPLE",))]


def test_a_registered_driver_is_used_and_its_server_figures_reach_the_report(bench_server: Any,
                                                                             tmp_path: Path) -> None:
    with fresh_plugin_manager(CountingPlugin(), load_entry_points=True):
        runner = BenchmarkRunner(backend="example", backend_options={"base_url": bench_server.base_url},
                                 gpu_monitor=None)
        assert isinstance(runner.driver(runner.config()), CountingDriver)
        report = runner.run(prompts=SHORT, n_tokens=8, concurrency=2, num_requests=5)
    server = report.tests[0].summary.server
    assert server is not None and server["requests_sent"] == 5 and server.source == "counting driver"
    assert "server (counting driver): requests sent 5 requests" in render_results(report)
    again = BenchmarkReport.load(report.save(tmp_path / "r.json"))
    assert again.tests[0].summary.server == server
    assert json.loads((tmp_path / "r.json").read_text())["tests"][0]["summary"]["server"]["figures"][
        "requests_sent"] == {"value": 5, "unit": "requests", "label": "requests sent"}


def test_reports_written_before_drivers_were_plugins_still_read() -> None:
    old = {"prompt_tokens": 40.0, "tokens_predicted": 192.0, "decode_calls": None, "max_busy_slots": 4}
    server = ServerFigures.from_dict(old)
    assert server["tokens_predicted"] == 192.0 and server["max_busy_slots"] == 4 and server["decode_calls"] is None


def test_the_llamacpp_driver_starts_a_tiny_server_from_python_and_cleans_up() -> None:
    pytest.importorskip("xllamacpp")
    pytest.importorskip("gguf")
    notices: list[str] = []
    report = BenchmarkRunner("llama.cpp", driver_options={"tiny": True, "n_parallel": 2}, gpu_monitor=None,
                             notice=notices.append).run(prompts=SHORT, n_tokens=4, concurrency=2, num_requests=2)
    env = report.environment
    assert report.tests[0].summary.completed == 2 and env["server"]["total_slots"] == 2
    assert env["model"]["name"] == "tiny-llama" and len(env["model"]["sha256"]) == 64
    assert not Path(env["model"]["path"]).exists()  # the generated model and its folder are gone with the server
    assert notices and "starting a llama.cpp server on tiny-llama.gguf (2 slots)" in notices[0]


def test_llamacpp_driver_option_mistakes_are_clear() -> None:
    from llamatelemetry.bench import LoadDriverError

    with pytest.raises(LoadDriverError, match="--in-process needs --model"):
        BenchmarkRunner("llama.cpp", driver_options={"in_process": True}).run(n_tokens=4)
    with pytest.raises(LoadDriverError, match="not both"):
        BenchmarkRunner("llama.cpp", driver_options={"tiny": True}).run("http://127.0.0.1:9", n_tokens=4)
    with pytest.raises(LoadDriverError, match="no load driver of its own"):
        BenchmarkRunner("example", driver_options={"tiny": True}).run(n_tokens=4)
