"""Real llama.cpp servers that misbehave mid-stream: paused (SIGSTOP), killed (SIGKILL), restarted.

Each test starts its own server process (xllamacpp's, through ServerManager: a real subprocess in
its own process group), because it is about to be stopped, killed or restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.semconv import gen_ai
from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')

from llamatelemetry_llamacpp.client import LlamaCppClient
from llamatelemetry_llamacpp.errors import ServerTimeoutError, StreamProtocolError
from llamatelemetry_llamacpp.metrics_bridge import LlamaCppServerMetrics
from llamatelemetry_llamacpp.server import ServerManager

pytestmark = pytest.mark.timeout(180)

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def _error_type(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _group_gone(pgid: int, timeout: float = 5.0) -> bool:
    """No process of the group is left (zombies reaped by Popen.wait count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def smollm2_server(smollm2_gguf: Path, tmp_path: Path) -> Iterator[ServerManager]:
    """A SmolLM2 server of our own (about 25 tokens/s on one thread here: slow enough to catch mid-stream)."""
    manager = ServerManager(log_dir=tmp_path)
    manager.start_server(smollm2_gguf, gpu_layers=0, ctx_size=1024, port=None, threads=1, flash_attn=False)
    try:
        yield manager
    finally:
        pid = manager.pid
        if pid is not None:
            # A test that failed half-way may leave it stopped: SIGCONT so SIGTERM can work.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
        manager.stop_server(timeout_s=2)


def test_a_paused_server_times_out_and_is_killed(smollm2_server: ServerManager,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """SIGSTOP mid-stream: the read timeout fires (ServerTimeoutError, ERROR span); stop_server() kills it."""
    pid = smollm2_server.pid
    assert pid is not None
    timeout = 1.5
    with InMemoryTelemetry() as telemetry, LlamaCppClient(smollm2_server.base_url, timeout=timeout) as client:
        stream = client.chat.create(messages=PROMPT, max_tokens=400, stream=True, temperature=0.0)
        iterator = iter(stream)
        first = next(iterator)
        assert first is not None
        os.killpg(pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        with pytest.raises(ServerTimeoutError) as info:
            for _ in iterator:
                pass
        waited = time.monotonic() - paused_at
        assert isinstance(info.value, TimeoutError) and f"{timeout:g} s" in str(info.value)
        # At least the limit (chunks already in the socket buffer are read at once), and not much more.
        assert timeout * 0.9 <= waited < timeout + 10, waited
        (span,) = [s for s in telemetry.spans() if s.name.startswith("chat ")]
        assert span.status.status_code.name == "ERROR"
        assert span.attributes[gen_ai.ERROR_TYPE] == _error_type(ServerTimeoutError)

    caplog.set_level(logging.WARNING, logger="llamatelemetry")
    started = time.monotonic()
    smollm2_server.stop_server(timeout_s=1.0)  # SIGTERM stays pending on a stopped process: SIGKILL follows
    assert time.monotonic() - started < 1.0 + 10
    assert "killing it" in caplog.text
    assert _group_gone(pid), "nothing of the server's process group is left"
    assert smollm2_server.pid is None and not smollm2_server.is_running()


def test_a_killed_server_is_a_stream_protocol_error(smollm2_server: ServerManager) -> None:
    """SIGKILL mid-stream: the stream raises StreamProtocolError and the span ends as ERROR."""
    pid = smollm2_server.pid
    assert pid is not None
    with InMemoryTelemetry() as telemetry, LlamaCppClient(smollm2_server.base_url, timeout=30) as client:
        stream = client.chat.create(messages=PROMPT, max_tokens=400, stream=True, temperature=0.0)
        received = [next(iter(stream)).delta_text]
        os.killpg(pid, signal.SIGKILL)
        with pytest.raises(StreamProtocolError, match=r"connection broke mid-stream|ended without"):
            for chunk in stream:
                received.append(chunk.delta_text)
        assert stream.closed
        (span,) = [s for s in telemetry.spans() if s.name.startswith("chat ")]
        assert span.status.status_code.name == "ERROR"
        assert span.attributes[gen_ai.ERROR_TYPE] == _error_type(StreamProtocolError)
    assert not smollm2_server.is_running()
    smollm2_server.stop_server()  # reaps the killed process
    assert _group_gone(pid)


def _points(reader: Any) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    data = reader.get_metrics_data()
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if type(metric.data).__name__ != "Sum":
                    continue
                for point in metric.data.data_points:
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = point.value
    return points


def test_a_restart_under_the_metrics_bridge_gives_no_negative_delta(tiny_gguf: Path, tmp_path: Path) -> None:
    """The server's counters restart at zero; exported counters carry on (delta >= 0, cumulative never down)."""
    from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    delta = InMemoryMetricReader(preferred_temporality={ObservableCounter: AggregationTemporality.DELTA})
    cumulative = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[delta, cumulative])
    manager = ServerManager(log_dir=tmp_path)
    manager.start_server(tiny_gguf, gpu_layers=0, ctx_size=512, port=None, threads=1)
    port = manager.settings.port if manager.settings else None
    try:
        def generate(n: int) -> None:
            with LlamaCppClient(manager.base_url, timeout=60) as client:
                for _ in range(n):
                    client.completion("Once upon a time", n_predict=16, temperature=0.0)

        bridge = LlamaCppServerMetrics(manager.base_url, meter=provider.get_meter("test"))
        generate(3)
        delta_before, cumulative_before = _points(delta), _points(cumulative)
        predicted = "llamatelemetry.llama_cpp.server.tokens_predicted"
        assert any(name == predicted and value > 0 for (name, _), value in cumulative_before.items())

        manager.stop_server()
        manager.start_server(tiny_gguf, gpu_layers=0, ctx_size=512, port=port, threads=1)
        generate(1)  # fewer tokens than before the restart: the server's counters went down
        seen: list[dict[tuple[str, tuple[tuple[str, Any], ...]], float]] = []
        for _ in range(5):  # the first scrape after the restart may find the old connection closed
            points = _points(delta)
            cumulative_after = _points(cumulative)
            seen.append(points)
            if any(name == predicted for name, _ in points):
                break
        bridge.stop()
    finally:
        manager.stop_server()
        provider.shutdown()

    assert all(value >= 0 for value in delta_before.values())
    for points in seen:
        negative = {key: value for key, value in points.items() if value < 0}
        assert not negative, f"negative deltas after the restart: {negative}"
    assert any(name == predicted and value > 0 for points in seen for (name, _), value in points.items()), seen
    for key, value in cumulative_after.items():
        assert value >= cumulative_before.get(key, 0.0), (key, value, cumulative_before.get(key))


@pytest.mark.parametrize("what", ["missing", "not executable"])
def test_a_server_binary_that_cannot_run_is_a_clear_error_and_leaks_nothing(tiny_gguf: Path, tmp_path: Path,
                                                                            what: str) -> None:
    """binary= naming nothing runnable: ServerStartError naming it; the log file is closed, nothing is left."""
    from llamatelemetry_llamacpp.server import ServerStartError

    binary = tmp_path / "bin" / "llama-server"
    if what == "not executable":
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o644)
    manager = ServerManager(log_dir=tmp_path / "logs", binary=str(binary))
    with pytest.raises(ServerStartError) as caught:
        manager.start_server(tiny_gguf, kind="llama-server", port=None, threads=1, timeout_s=5)
    assert str(binary) in str(caught.value) and "binary=" in str(caught.value), str(caught.value)
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not [f for f in open_files if f.startswith(str(tmp_path / "logs"))], "the server log is left open"
    assert manager.pid is None and not manager.is_running()
    manager.stop_server()  # harmless
