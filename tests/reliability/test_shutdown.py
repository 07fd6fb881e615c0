"""A dead collector never holds the application at exit (issue 15, item 1).

Each test runs a real script in a fresh interpreter: 50 generations on the in-process llama.cpp
backend (the tiny GGUF), OTLP export to an endpoint that never delivers anything (a closed port,
or a black hole: a socket that accepts connections and never answers), then exit. The process
must be gone within the shutdown deadline + 1 s of its last request, and say once, in one log
line, what it exported, dropped and left undelivered.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason='pip install "llamatelemetry-llamacpp[cpu]" (llama-cpp-python)')

REQUESTS = 50
REPORT = re.compile(r"llamatelemetry export report: traces: (\d+) spans exported, (\d+) dropped, (\d+) undelivered; "
                    r"metrics: (\d+) points exported, (\d+) dropped, (\d+) undelivered")

SCRIPT = """
import json, sys, time
import llamatelemetry
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from llamatelemetry.inference import InferenceEngine, InferenceRequest, SamplingParams
from llamatelemetry_llamacpp.backend import LlamaCppBackend

seen = InMemorySpanExporter()  # counts what was made, to compare with the report
llamatelemetry.init(service_name="shutdown-test", span_processors=[SimpleSpanProcessor(seen)],
                    metric_export_interval_ms=200, **json.loads(sys.argv[2]))
request = InferenceRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=2,
                           sampling=SamplingParams(temperature=0.0, seed=1))
with InferenceEngine(LlamaCppBackend(sys.argv[1], n_ctx=128, n_threads=1)) as engine:
    for _ in range(50):
        engine.generate(request)
time.sleep(0.5)  # let the metric reader's export attempts start: they must not hold the exit either
print(json.dumps({"spans": len(seen.get_finished_spans())}), flush=True)
print(f"DONE {time.time()!r}", flush=True)
if sys.argv[3] == "shutdown":
    llamatelemetry.shutdown()
# else: interpreter exit runs the shutdown (atexit)
"""


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections and never sends a byte back."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def _run(tiny_gguf: Path, options: str, how: str, env: dict[str, str] | None = None) -> tuple[float, str, str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tiny_gguf), options, how],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    assert proc.stdout is not None
    done_at = None
    before: list[str] = []
    for line in proc.stdout:
        if line.startswith("DONE "):
            done_at = float(line.split()[1])
            break
        before.append(line)
    proc.wait(timeout=60)
    exited_at = time.time()
    stdout, stderr = "".join(before) + proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0 and done_at is not None, f"rc={proc.returncode}\n{stderr[-3000:]}"
    print(f"exit {exited_at - done_at:.2f} s after the last request")
    return exited_at - done_at, stdout, stderr


def _report(stderr: str) -> tuple[int, ...]:
    lines = [line for line in stderr.splitlines() if "llamatelemetry export report" in line]
    assert len(lines) == 1, f"exactly one report line, got {lines}\n{stderr[-3000:]}"
    match = REPORT.search(lines[0])
    assert match, lines[0]
    return tuple(int(g) for g in match.groups())


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exit_with_a_black_hole_collector_takes_at_most_the_default_deadline(
    tiny_gguf: Path, black_hole: int, protocol: str
) -> None:
    options = f'{{"otlp_endpoint": "http://127.0.0.1:{black_hole}", "protocol": "{protocol}"}}'
    # No shutdown() call: interpreter exit must be bounded too. The default deadline is 2 s.
    took, _, stderr = _run(tiny_gguf, options, "atexit")
    assert took <= 2.0 + 1.0, f"exit took {took:.2f} s after the last request ({protocol})"
    exported, dropped, undelivered, points_exported, points_dropped, points_undelivered = _report(stderr)
    assert exported == 0 and points_exported == 0, "nothing can reach this endpoint"
    assert dropped == 0 and points_dropped == 0, "the default buffer holds 50 requests' telemetry"
    assert undelivered >= REQUESTS, "every span is counted as undelivered"
    assert points_undelivered > 0


def test_the_deadline_is_configurable_by_argument_and_variable(tiny_gguf: Path, black_hole: int,
                                                               closed_port: int) -> None:
    options = f'{{"otlp_endpoint": "http://127.0.0.1:{black_hole}", "shutdown_timeout": 0.5}}'
    took, stdout, stderr = _run(tiny_gguf, options, "shutdown")
    assert took <= 0.5 + 1.0, f"shutdown(timeout 0.5 s) took {took:.2f} s"
    spans = int(re.search(r'"spans": (\d+)', stdout).group(1))  # type: ignore[union-attr]
    assert spans >= REQUESTS
    exported, dropped, undelivered, *_ = _report(stderr)
    assert (exported, dropped, undelivered) == (0, 0, spans), "every span made is accounted for, once"

    # A closed port fails every send at once: the retries go on until the deadline, not past it.
    options = f'{{"otlp_endpoint": "http://127.0.0.1:{closed_port}"}}'
    took, _, stderr = _run(tiny_gguf, options, "atexit", env={"LLAMATELEMETRY_SHUTDOWN_TIMEOUT": "0.3"})
    assert took <= 0.3 + 1.0, f"exit with LLAMATELEMETRY_SHUTDOWN_TIMEOUT=0.3 took {took:.2f} s"
    exported, dropped, undelivered, *_ = _report(stderr)
    assert exported == 0 and dropped == 0 and undelivered >= REQUESTS
