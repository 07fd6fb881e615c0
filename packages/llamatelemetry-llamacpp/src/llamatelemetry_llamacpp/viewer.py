"""A local trace viewer for ``llamatelemetry demo --viewer``: Arize Phoenix, started and stopped here.

Phoenix (``pip install arize-phoenix``, optional and large) is an OTLP trace receiver with a web UI
and a REST API. It runs as its own process (``python -m phoenix.server.main serve``) on loopback
ports chosen here, keeps its SQLite database in a working folder, and stops on SIGINT. Spans land
in the Phoenix project named by the resource attribute ``openinference.project.name``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import attrs

from llamatelemetry.errors import LlamaTelemetryError

__all__ = [
    "PHOENIX_INSTALL_COMMAND",
    "PROJECT_ATTRIBUTE",
    "PhoenixNotInstalledError",
    "PhoenixStartError",
    "PhoenixServer",
    "phoenix_installed",
    "start_phoenix",
    "interrupt_on_signals",
    "wait_for_interrupt",
]

#: What to run when Phoenix is missing (``uv pip install arize-phoenix`` resolves it much faster).
PHOENIX_INSTALL_COMMAND = "pip install arize-phoenix"
#: The resource attribute Phoenix files spans under: its project name.
PROJECT_ATTRIBUTE = "openinference.project.name"
#: Phoenix's usual ports; taken when free, so a user's bookmarks and exporters keep working.
DEFAULT_HTTP_PORT = 6006
DEFAULT_GRPC_PORT = 4317


class PhoenixNotInstalledError(LlamaTelemetryError, ImportError):
    """Arize Phoenix is not installed in this Python environment."""

    def __init__(self) -> None:
        self.install_command = PHOENIX_INSTALL_COMMAND
        super().__init__(f"the trace viewer needs Arize Phoenix, which is not installed in {sys.executable}. "
                         f"Install it with: {PHOENIX_INSTALL_COMMAND} (about 850 MB; `uv pip install arize-phoenix` "
                         "resolves it in seconds), or run `nox -s viewer` from the repository.", name="phoenix")


class PhoenixStartError(LlamaTelemetryError, RuntimeError):
    """Phoenix exited or did not answer in time; the message carries the end of its log."""


def phoenix_installed() -> bool:
    """Whether ``arize-phoenix``'s server is importable here, checked without importing anything.

    ``find_spec("phoenix.server.main")`` would import the ``phoenix`` package first: about 18 s.
    """
    spec = importlib.util.find_spec("phoenix")
    locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and any((Path(folder) / "server" / "main.py").is_file() for folder in locations or ())


def _port_free(host: str, port: int) -> bool:
    # Phoenix's gRPC receiver binds [::] whatever its host is: a port counts as free only when nothing
    # holds it on the host, on any IPv4 address, or (where the machine has IPv6) on any IPv6 address.
    probes = [(socket.AF_INET, host), (socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        probes.append((socket.AF_INET6, "::"))
    for family, address in probes:
        with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind((address, port))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # IPv6 compiled in but not configured: nothing can hold the port there
                return False
    return True


def _pick_port(host: str, wanted: int | None, preferred: int, taken: set[int]) -> int:
    """``wanted`` as given (0 or None: ``preferred`` when free, else any free port)."""
    if wanted:
        return wanted
    if preferred not in taken and _port_free(host, preferred):
        return preferred
    while True:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@attrs.define
class PhoenixServer:
    """A running Phoenix process: where its UI and OTLP receivers listen, and how to read spans back.

    Example::

        phoenix = start_phoenix(tmp_path)
        try:
            init(otlp_endpoint=phoenix.otlp_grpc_endpoint, resource_attributes={PROJECT_ATTRIBUTE: "demo"})
            ...
            spans = phoenix.wait_for_spans("demo", 3)
        finally:
            phoenix.stop()
    """

    process: subprocess.Popen[bytes]
    host: str
    http_port: int
    grpc_port: int
    working_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        """The web UI (and REST API) base URL."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """The OTLP/gRPC trace receiver, as an exporter endpoint."""
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def otlp_http_traces_endpoint(self) -> str:
        """The OTLP/HTTP trace receiver (protobuf)."""
        return f"{self.url}/v1/traces"

    def get_json(self, path: str, timeout_s: float = 10.0) -> Any:
        """GET ``path`` of the REST API (``/v1/projects``...) and decode its JSON body."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout_s) as response:
            return json.loads(response.read())

    def spans(self, project: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The spans of ``project`` as Phoenix's REST API returns them (an unknown project: none)."""
        try:
            body = self.get_json(f"/v1/projects/{urllib.parse.quote(project, safe='')}/spans?limit={limit}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return list(body.get("data") or [])

    def wait_for_spans(self, project: str, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The spans of ``project`` once at least ``count`` have been stored (Phoenix inserts in batches).

        Returns what is there after ``timeout_s`` even if fewer arrived, so a caller can say what was missing.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.spans(project)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.3)

    def project_url(self, project: str) -> str:
        """The UI page of ``project`` (its id comes from the REST API), or the UI's front page if it is unknown."""
        try:
            projects = self.get_json("/v1/projects").get("data") or []
        except (OSError, ValueError):
            return self.url
        ids = [p.get("id") for p in projects if p.get("name") == project]
        return f"{self.url}/projects/{ids[0]}" if ids and ids[0] else self.url

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop Phoenix as its own Ctrl-C does (SIGINT), killing it if it does not exit in ``timeout_s``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _ready(server: PhoenixServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=2) as response:
            if response.status != 200:
                return False
    except (OSError, ValueError):
        return False
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((server.host, server.grpc_port)) == 0


def start_phoenix(working_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", http_port: int | None = None,
                  grpc_port: int | None = None, startup_timeout_s: float = 120.0) -> PhoenixServer:
    """Start Phoenix with its database in ``working_dir`` and wait until its UI and gRPC receiver answer.

    Ports left out are Phoenix's usual ones (6006, 4317) when free, any free port otherwise.
    Raises ``PhoenixNotInstalledError`` without Phoenix, ``PhoenixStartError`` if it exits or is not up in time.
    """
    if not phoenix_installed():
        raise PhoenixNotInstalledError()
    folder = Path(working_dir)
    folder.mkdir(parents=True, exist_ok=True)
    http = _pick_port(host, http_port, DEFAULT_HTTP_PORT, set())
    grpc = _pick_port(host, grpc_port, DEFAULT_GRPC_PORT, {http})
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(folder), "PHOENIX_HOST": host, "PHOENIX_PORT": str(http),
           "PHOENIX_GRPC_PORT": str(grpc),
           # No usage reporting: nothing outside this machine is contacted.
           "PHOENIX_TELEMETRY_ENABLED": "false"}
    log_path = folder / "phoenix.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "phoenix.server.main", "serve"], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = PhoenixServer(process=process, host=host, http_port=http, grpc_port=grpc, working_dir=folder,
                           log_path=log_path)
    deadline = time.monotonic() + startup_timeout_s
    try:
        while not _ready(server):
            if process.poll() is not None:
                raise PhoenixStartError(f"Phoenix exited with status {process.returncode} while starting "
                                        f"(ports {http}, {grpc}); its log {log_path} ends:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise PhoenixStartError(f"Phoenix did not answer on {server.url}/healthz and gRPC port {grpc} within "
                                        f"{startup_timeout_s:.0f} s; its log {log_path} ends:\n{_tail(log_path)}")
            time.sleep(0.3)
    except BaseException:  # Ctrl-C while it starts, too: never leave it running
        server.stop()
        raise
    return server


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_signals() -> None:
    """Make SIGINT and SIGTERM raise ``KeyboardInterrupt`` here, so cleanup (stopping Phoenix) runs.

    A process started in the background by a shell inherits SIGINT ignored, and SIGTERM's default ends it
    without running ``finally`` blocks or ``atexit``; either would leave Phoenix running. Main thread only.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def wait_for_interrupt(server: PhoenixServer) -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM, or until Phoenix exits by itself, while the user looks at the UI."""
    interrupt_on_signals()
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
