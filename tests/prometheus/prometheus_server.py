"""A real Prometheus server (Debian's ``prometheus`` package) for tests: start, scrape, query, stop."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Fast enough that a test sees several scrapes within a second or two of inference.
SCRAPE_INTERVAL = "200ms"


def prometheus_binary() -> str | None:
    """``prometheus`` on PATH (apt-get install --no-install-recommends prometheus), else ``None``."""
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    """``promtool`` from the same package, else ``None``."""
    return shutil.which("promtool")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """One Prometheus process scraping ``targets`` (``host:port``, path ``/metrics``) every 200 ms."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until ``/-/ready`` answers."""
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: llamatelemetry\n"
            f"    static_configs:\n      - targets: {json.dumps(self.targets)}\n",
            encoding="utf-8",
        )
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"prometheus did not become ready in {timeout} s: {self.log()}")

    def log(self) -> str:
        """The server's log so far (for assertion messages)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` (raises with Prometheus' error otherwise)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus /api/v1/{path}?{query}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def series_names(self) -> set[str]:
        """Every metric name Prometheus holds."""
        return set(self.api("label/__name__/values"))

    def wait_for(self, expr: str, ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0,
                 ) -> list[dict[str, Any]]:
        """Query ``expr`` until ``ready(result)``; returns that result (raises with the last one on timeout)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if ready(result):
                return result
            time.sleep(0.1)
        raise AssertionError(f"Prometheus never answered {expr!r} as expected within {timeout} s; last: {result}\n"
                             f"targets: {self.api('targets')}\nlog: {self.log()}")


@contextmanager
def running_prometheus(workdir: Path, targets: list[str]) -> Iterator[PrometheusServer]:
    """A started Prometheus for the with-block."""
    binary = prometheus_binary()
    assert binary is not None, "prometheus is not installed (apt-get install --no-install-recommends prometheus)"
    server = PrometheusServer(binary, workdir, targets)
    server.start()
    try:
        yield server
    finally:
        server.stop()
