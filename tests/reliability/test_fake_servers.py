"""Server misbehaviour a real llama.cpp server cannot show on cue, played by small real processes named as fakes.

- ``FAKE llama-server``: a Python script passed as ``ServerManager(binary=...)``. It answers ``/health``
  like llama-server, starts a helper in its own process group that ignores SIGTERM (as a wrapper's child
  or a helper process may), and exits on SIGTERM leaving the helper behind. llama.cpp's own servers start
  no such helper, so only a fake can check that ``stop_server()`` clears the whole group.
- ``STALLING event-stream server``: a tiny real socket server (not llama.cpp) that sends an event stream's
  headers and one event, then stops sending: the read timeout of a request with its own ``timeout`` fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llamatelemetry_llamacpp.errors import ServerTimeoutError
from llamatelemetry_llamacpp.server import ServerManager
from llamatelemetry_llamacpp.transport import AsyncTransport, HttpRequest, SyncTransport

pytestmark = pytest.mark.timeout(60)

_FAKE_LLAMA_SERVER = textwrap.dedent("""\
    #!{python}
    # FAKE llama-server (a test double): answers /health, leaves a SIGTERM-proof helper in its process group.
    import http.server, subprocess, sys

    args = sys.argv[1:]
    host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
    helper = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE)
    assert helper.stdout is not None and helper.stdout.readline() == b"ready\\n"
    print("helper", helper.pid, flush=True)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{{"status": "ok"}}')

        def log_message(self, *args):
            pass

    # SIGTERM's default action ends this process at once; the helper ignores it and stays.
    http.server.HTTPServer((host, port), Health).serve_forever()
    """)


def _live_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (a zombie waiting for its parent to reap it does not)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
            state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(entry))
    return members


def _helper_pid(log_path: Path) -> int:
    for line in log_path.read_text().splitlines():
        if line.startswith("helper "):
            return int(line.split()[1])
    raise AssertionError(f"the fake server did not report its helper:\n{log_path.read_text()}")


def test_stop_server_leaves_nothing_of_the_process_group(tmp_path: Path) -> None:
    """The FAKE llama-server exits on SIGTERM, its helper does not: stop_server() leaves no process of the group."""
    fake = tmp_path / "fake-llama-server"
    fake.write_text(_FAKE_LLAMA_SERVER.format(python=sys.executable))
    fake.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")  # never read: the fake serves no model
    manager = ServerManager(log_dir=tmp_path / "logs", binary=str(fake))
    manager.start_server(model, kind="llama-server", port=None, timeout_s=30)
    pgid = manager.pid
    assert pgid is not None and manager.log_path is not None
    try:
        helper = _helper_pid(manager.log_path)
        assert os.getpgid(helper) == pgid and helper in _live_members(pgid), "the helper runs in the server's group"

        started = time.monotonic()
        manager.stop_server(timeout_s=10)
        assert time.monotonic() - started < 10, "the server itself exits on SIGTERM: no wait for the timeout"
        deadline = time.monotonic() + 5
        while _live_members(pgid) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
            time.sleep(0.02)
        assert _live_members(pgid) == [], "stop_server() left processes of the server's group running"
        assert manager.pid is None and not manager.is_running()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


class StallingEventStreamServer:
    """A tiny real socket server (not llama.cpp): event-stream headers and one event, then silence until closed."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while not self._release.is_set():
                connection, _ = self._listener.accept()
                with connection:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += connection.recv(65536)
                    event = b'data: {"choices": [{"index": 0, "delta": {"content": "Once"}}]}\n\n'
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n"
                                       + f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    self._release.wait(30)  # stop sending, keep the connection open

    def close(self) -> None:
        self._release.set()
        self._listener.close()
        self._thread.join(5)


@pytest.fixture
def stalling_server() -> Iterator[StallingEventStreamServer]:
    server = StallingEventStreamServer()
    try:
        yield server
    finally:
        server.close()


PATH = "/v1/chat/completions"


def _check(error: BaseException, waited: float) -> None:
    assert isinstance(error, ServerTimeoutError), error
    assert error.timeout == 0.5 and "within 0.5 s (read timeout)" in str(error), str(error)
    assert 0.45 <= waited < 10, f"the request's own 0.5 s applied, not the client's 30 s (waited {waited:.2f} s)"


def test_a_stalled_stream_reports_the_requests_own_timeout(stalling_server: StallingEventStreamServer) -> None:
    """Mid-stream read timeout of a request with timeout=0.5 on a client with timeout=30: the error says 0.5 s."""
    transport = SyncTransport("LlamaCppClient", stalling_server.url, timeout=30.0, retries=0)
    try:
        response = transport.send(HttpRequest("POST", PATH, {"stream": True}, stream=True, timeout=0.5))
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as caught:
            for _ in response.iter_text():
                pass
        _check(transport.stream_failure(caught.value, PATH), time.monotonic() - started)
    finally:
        transport.close()


def test_a_stalled_async_stream_reports_the_requests_own_timeout(
        stalling_server: StallingEventStreamServer) -> None:
    """The same through AsyncTransport."""

    async def read() -> tuple[BaseException, float]:
        transport = AsyncTransport("AsyncLlamaCppClient", stalling_server.url, timeout=30.0, retries=0)
        try:
            response = await transport.send(HttpRequest("POST", PATH, {"stream": True}, stream=True, timeout=0.5))
            started = time.monotonic()
            try:
                async for _ in response.aiter_text():
                    pass
            except httpx.ReadTimeout as exc:
                return transport.stream_failure(exc, PATH), time.monotonic() - started
            raise AssertionError("the stalled stream ended instead of timing out")
        finally:
            await transport.aclose()

    _check(*asyncio.run(read()))
