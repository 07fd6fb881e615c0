"""Starting and stopping a llama.cpp server: ``ServerManager`` and ``quick_start``.

Three kinds of server, all started as a child process with the same flags:

- ``"xllamacpp"``: llama.cpp's own C++ server embedded in the ``xllamacpp`` wheel (the default
  when installed: prebuilt, no compiler needed);
- ``"llama-server"``: a ``llama-server`` binary on PATH (or ``binary=``);
- ``"llama-cpp-python"``: ``python -m llama_cpp.server`` (``pip install "llama-cpp-python[server]"``).

The manager binds to 127.0.0.1 unless told otherwise, drains the server's output to a log file
(never a pipe that could fill and stall the server), waits for ``/health`` to answer 200, refuses
a port already served by a different model, and leaves no process behind: on ``stop_server()``,
on an exception while starting, on context-manager exit and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs

from llamatelemetry.errors import LlamaTelemetryError
from llamatelemetry.inference.types import CudaInferenceConfig

__all__ = [
    "ServerKind",
    "ServerManager",
    "ServerStartError",
    "PortInUseError",
    "ServerKindUnavailableError",
    "quick_start",
    "available_server_kinds",
]

log = logging.getLogger("llamatelemetry.llamacpp.server")

ServerKind = Literal["xllamacpp", "llama-server", "llama-cpp-python"]
SERVER_KINDS: tuple[str, ...] = ("xllamacpp", "llama-server", "llama-cpp-python")


class ServerStartError(LlamaTelemetryError, RuntimeError):
    """The server process exited or did not become healthy in time; the message ends with its log."""


class PortInUseError(ServerStartError):
    """Something already listens on the port (another model's server, or another program)."""


class ServerKindUnavailableError(ServerStartError):
    """The asked-for kind of server is not installed here."""


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def available_server_kinds(binary: str | None = None) -> list[str]:
    """The kinds of llama.cpp server that can start here, preferred first."""
    kinds = []
    if _module_available("xllamacpp"):
        kinds.append("xllamacpp")
    if binary or shutil.which("llama-server"):
        kinds.append("llama-server")
    if _module_available("llama_cpp") and _module_available("uvicorn"):
        kinds.append("llama-cpp-python")
    return kinds


def _install_hint(kind: str) -> str:
    return {
        "xllamacpp": 'pip install "llamatelemetry-llamacpp[server]"  (installs xllamacpp)',
        "llama-server": "put llama.cpp's llama-server binary on PATH, or pass binary='/path/to/llama-server'",
        "llama-cpp-python": 'pip install "llama-cpp-python[server]"',
    }[kind]


def _probe(url: str, timeout: float = 2.0) -> tuple[int | None, Any]:
    """GET ``url``: (status, parsed JSON or text), or (None, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return None, exc
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def _port_is_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host if host not in ("0.0.0.0", "") else "127.0.0.1", port)) == 0


def _free_port(host: str) -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host if host not in ("0.0.0.0", "") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exit_code(process: subprocess.Popen[bytes]) -> int | None:
    """The process's exit code once it has exited (``-N``: killed by signal N), None while it runs; never reaps it.

    Left unreaped until ``stop_server()``, an exited server keeps its process id, and with it its process
    group's id, reserved: no new process can take that id, so a signal to the group reaches only what the
    server left behind.
    """
    if process.returncode is not None:
        return process.returncode
    if not hasattr(os, "waitid"):  # pragma: no cover - every Linux has it
        return process.poll()
    try:
        state = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else: Popen records what it can
        return process.poll()
    if state is None:
        return None
    return state.si_status if state.si_code == os.CLD_EXITED else -state.si_status


def _wait_exited(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether the process exits within ``timeout_s`` seconds (without reaping it, as ``_exit_code``)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while _exit_code(process) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def _served_model(base_url: str) -> str | None:
    """The model path or id a llama.cpp server reports, or None if it is not one."""
    status, props = _probe(f"{base_url}/props")
    if status == 200 and isinstance(props, dict) and props.get("model_path"):
        return str(props["model_path"])
    status, models = _probe(f"{base_url}/v1/models")
    if status == 200 and isinstance(models, dict) and models.get("data"):
        return str(models["data"][0].get("id"))
    return None


@attrs.frozen
class ServerSettings:
    """Everything a server is started with (resolved from arguments, a preset and a CudaInferenceConfig)."""

    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8090
    config: CudaInferenceConfig = attrs.field(factory=CudaInferenceConfig)
    n_parallel: int = 1
    threads: int | None = None
    alias: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    metrics: bool = True
    slots: bool = True
    warmup: bool = True
    extra_args: tuple[str, ...] = ()

    def flags(self, kind: str) -> list[str]:
        """Command-line flags for ``kind`` (llama-server's spelling, or llama_cpp.server's)."""
        c = self.config
        if kind == "llama-cpp-python":
            flags = ["--model", str(self.model_path), "--host", self.host, "--port", str(self.port),
                     "--n_gpu_layers", str(c.gpu_layers), "--n_ctx", str(c.ctx_size), "--n_batch", str(c.batch_size),
                     "--flash_attn", str(c.flash_attn)]
            if c.n_gpus > 1:
                flags += ["--tensor_split", *[str(v) for v in c.tensor_split_values]]
            if self.threads:
                flags += ["--n_threads", str(self.threads)]
            if self.alias:
                flags += ["--model_alias", self.alias]
            if self.api_key:
                flags += ["--api_key", self.api_key]
            return [*flags, *self.extra_args]
        flags = ["-m", str(self.model_path), "--host", self.host, "--port", str(self.port),
                 "-ngl", str(c.gpu_layers), "-c", str(c.ctx_size), "-b", str(c.batch_size),
                 "-fa", "on" if c.flash_attn else "off", "-np", str(self.n_parallel)]
        if c.n_gpus > 1:
            flags += ["-ts", c.tensor_split]
        if self.threads:
            flags += ["-t", str(self.threads)]
        if self.alias:
            flags += ["-a", self.alias]
        if self.api_key:
            flags += ["--api-key", self.api_key]
        if self.metrics:
            flags.append("--metrics")
        if self.slots:
            flags.append("--slots")
        if not self.warmup:
            flags.append("--no-warmup")
        return [*flags, *self.extra_args]


# Every process a manager started, so none survives the interpreter.
_live: weakref.WeakSet[ServerManager] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for manager in list(_live):
        with contextlib.suppress(Exception):
            manager.stop_server(timeout_s=5)


class ServerManager:
    """Starts one llama.cpp server and stops it; a context manager.

    Example::

        with ServerManager() as server:
            server.start_server("model.gguf", gpu_layers=0, port=8090)
            client = LlamaCppClient(server.base_url)
    """

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None, binary: str | None = None,
                 library_path: Sequence[str | os.PathLike[str]] = ()) -> None:
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._binary = binary
        #: Folders put first on the server's LD_LIBRARY_PATH (a CUDA build's libraries, as the Kaggle plugin
        #: computes them). Only the child gets them: the loader reads the variable at process start, so
        #: changing this process's environment would not help it and would leak into everything else it starts.
        self.library_path: tuple[str, ...] = tuple(os.fspath(p) for p in library_path)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self.settings: ServerSettings | None = None
        self.kind: str | None = None
        self.log_path: Path | None = None
        #: False when start_server attached to a server that was already running the same model.
        self.owns_process = False

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.settings is None:
            raise ServerStartError("No server was started: call start_server() first.")
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        return f"http://{host}:{self.settings.port}"

    @property
    def _health_path(self) -> str:
        # llama_cpp.server has no /health; its model list answers once the model is loaded.
        return "/v1/models" if self.kind == "llama-cpp-python" else "/health"

    @property
    def pid(self) -> int | None:
        """The server process id (None when not running or attached)."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """Whether the server answers ``/health`` with 200."""
        if self.settings is None:
            return False
        if self._process is not None and _exit_code(self._process) is not None:
            return False
        status, _ = _probe(f"{self.base_url}{self._health_path}", timeout=1.0)
        return status == 200

    # ------------------------------------------------------------------ start

    def start_server(
        self,
        model_path: str | os.PathLike[str],
        gpu_layers: int | None = None,
        tensor_split: str | Sequence[float] | None = None,
        flash_attn: bool | int | None = None,
        *,
        ctx_size: int | None = None,
        batch_size: int | None = None,
        config: CudaInferenceConfig | None = None,
        preset: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = 8090,
        kind: str | None = None,
        n_parallel: int = 1,
        threads: int | None = None,
        alias: str | None = None,
        api_key: str | None = None,
        metrics: bool = True,
        slots: bool = True,
        warmup: bool = True,
        extra_args: Sequence[str] = (),
        timeout_s: float = 120.0,
    ) -> ServerManager:
        """Start a server for ``model_path`` and wait until ``/health`` answers 200; returns self.

        Settings come from ``config`` (or ``preset``), then the explicit arguments override.
        ``port=None`` picks a free port.
        """
        if self._process is not None and _exit_code(self._process) is None:
            raise ServerStartError(f"This manager already runs a server at {self.base_url}; stop_server() first.")
        model = Path(model_path).expanduser()
        if not model.is_file():
            raise FileNotFoundError(f"Model file not found: {model}. Pass the path of a .gguf file.")
        if port is None:
            port = _free_port(host)
        settings = ServerSettings(
            model_path=model.resolve(), host=host, port=port,
            config=self._resolve_config(config, preset, gpu_layers, tensor_split, flash_attn, ctx_size, batch_size),
            n_parallel=n_parallel, threads=threads, alias=alias, api_key=api_key, metrics=metrics, slots=slots,
            warmup=warmup, extra_args=tuple(extra_args),
        )
        chosen = self._choose_kind(kind)
        self.settings, self.kind = settings, chosen

        if _port_is_open(host, port):
            served = _served_model(self.base_url)
            if served is not None and Path(served).name == model.name:
                log.info("a llama.cpp server already serves %s at %s; using it", model.name, self.base_url)
                self.owns_process = False
                return self
            self.settings = None
            what = f"a llama.cpp server with model {served!r}" if served else "another program"
            raise PortInUseError(f"Port {port} on {host} is already used by {what}; "
                                 f"stop it or pass another port (port={port + 1}).")

        self._spawn(settings, chosen)
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop_server()
            raise
        return self

    @staticmethod
    def _resolve_config(config: CudaInferenceConfig | None, preset: str | None, gpu_layers: int | None,
                        tensor_split: str | Sequence[float] | None, flash_attn: bool | int | None,
                        ctx_size: int | None, batch_size: int | None) -> CudaInferenceConfig:
        values: dict[str, Any] = {}
        if preset is not None:
            values.update(preset_values(preset))
        if config is not None:
            values.update(attrs.asdict(config))
        overrides = {"gpu_layers": gpu_layers, "tensor_split": tensor_split, "ctx_size": ctx_size,
                     "batch_size": batch_size, "flash_attn": None if flash_attn is None else bool(flash_attn)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return CudaInferenceConfig(**values)

    def _choose_kind(self, kind: str | None) -> str:
        available = available_server_kinds(self._binary)
        if kind is None:
            if not available:
                raise ServerKindUnavailableError(
                    "No llama.cpp server is installed. Install one with: " + _install_hint("xllamacpp"))
            return available[0]
        if kind not in SERVER_KINDS:
            raise ValueError(f"kind={kind!r} is not a llama.cpp server kind: use one of {', '.join(SERVER_KINDS)}.")
        if kind not in available:
            raise ServerKindUnavailableError(f"The {kind} server is not available here: {_install_hint(kind)}.")
        return kind

    def _command(self, settings: ServerSettings, kind: str) -> list[str]:
        if kind == "xllamacpp":
            return [sys.executable, "-m", "llamatelemetry_llamacpp._xllamacpp_server", *settings.flags(kind)]
        if kind == "llama-server":
            binary = self._binary or shutil.which("llama-server")
            assert binary is not None
            return [binary, *settings.flags(kind)]
        return [sys.executable, "-m", "llama_cpp.server", *settings.flags(kind)]

    def _spawn(self, settings: ServerSettings, kind: str) -> None:
        log_dir = self._log_dir or Path(tempfile.gettempdir()) / "llamatelemetry"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"llama-server-{settings.port}-{os.getpid()}.log"
        # A file, never a pipe: a server logging faster than we read would block on a full pipe.
        self._log_handle = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop_server
        command = self._command(settings, kind)
        shown = [("***" if settings.api_key and part == settings.api_key else part) for part in command]
        log.info("starting %s llama.cpp server: %s (log: %s)", kind, " ".join(shown), self.log_path)
        try:
            self._process = subprocess.Popen(
                command, stdout=self._log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.child_environment(),
                start_new_session=True,  # its own process group, so stopping reaches every child
            )
        except OSError as exc:  # missing or not executable: nothing started, so release the log file now
            self._log_handle.close()
            self._log_handle = None
            self.settings = None
            hint = ("pass binary='/path/to/llama-server' naming an executable file" if kind == "llama-server"
                    else _install_hint(kind))
            raise ServerStartError(f"Could not run the {kind} server {command[0]!r} ({exc.strerror or exc}); "
                                   f"{hint}.") from exc
        self.owns_process = True
        _live.add(self)

    def child_environment(self) -> dict[str, str]:
        """The environment a started server gets: this process's, with ``library_path`` first on LD_LIBRARY_PATH."""
        env = dict(os.environ)
        if self.library_path:
            inherited = [part for part in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if part]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys([*self.library_path, *inherited]))
        return env

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        last: object = None
        while time.monotonic() < deadline:
            assert self._process is not None
            code = _exit_code(self._process)
            if code is not None:
                raise ServerStartError(f"The {self.kind} server exited with code {code} "
                                       f"while starting.\n{self.log_tail()}")
            status, body = _probe(f"{self.base_url}{self._health_path}", timeout=2.0)
            if status == 200:
                return
            last = body if status is not None else "no answer yet"
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise ServerStartError(f"The {self.kind} server at {self.base_url} was not healthy after {timeout_s:.0f} s "
                               f"(last {self._health_path}: {last!r}).\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (for error messages)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text("utf-8", "replace").splitlines()[-lines:]
        secret = self.settings.api_key if self.settings else None
        joined = "\n".join(text)
        return f"--- last lines of {self.log_path} ---\n" + (joined.replace(secret, "***") if secret else joined)

    # ------------------------------------------------------------------ stop

    def stop_server(self, timeout_s: float = 10.0) -> None:
        """Stop the server this manager started and all of its process group (SIGTERM, then SIGKILL); harmless twice."""
        process, self._process = self._process, None
        if process is not None:
            if _exit_code(process) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                if not _wait_exited(process, timeout_s):
                    log.warning("llama.cpp server %d did not stop in %.0f s; killing it", process.pid, timeout_s)
            if process.returncode is None:
                # Not reaped yet, so the group's id is still ours (see _exit_code): whatever the server left in
                # its group (a wrapper's child, a helper that outlived SIGTERM) is killed with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        _live.discard(self)

    def __enter__(self) -> ServerManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_server()

    def __repr__(self) -> str:
        where = self.base_url if self.settings else "not started"
        return f"<ServerManager {self.kind or '-'} {where} pid={self.pid}>"


def preset_values(name: str) -> Mapping[str, Any]:
    """The CudaInferenceConfig fields of a registered preset (``kaggle_t4_dual``, ``single_gpu``, ``cpu``, ...)."""
    from llamatelemetry.plugins import get_plugin_manager

    presets = get_plugin_manager().presets()
    spec = presets.get(name)
    if spec is None:
        from llamatelemetry_llamacpp.presets import PRESETS

        if name in PRESETS:  # the plugin is not loaded through its entry point (blocked, or in tests)
            return PRESETS[name][1]
        # The Kaggle presets are registered by the Kaggle plugin, which may not be installed.
        hint = ' (the kaggle_* presets come with pip install "llamatelemetry-core[kaggle]")' \
            if name.startswith("kaggle") and not any(known.startswith("kaggle") for known in presets) else ""
        raise ValueError(f"Unknown preset {name!r}: use one of "
                         f"{', '.join(sorted(set(presets) | set(PRESETS)))}{hint}.")
    return spec.values


def quick_start(model_path: str | os.PathLike[str], preset: str = "kaggle_t4_dual", *,
                library_path: Sequence[str | os.PathLike[str]] = (), **options: Any) -> ServerManager:
    """Start a server for ``model_path`` with a preset's flags (any start_server option overrides); returns it.

    Presets come from the plugins' registry (``kaggle_*`` from the Kaggle plugin); ``library_path``
    goes to ``ServerManager`` (on Kaggle: ``auto_configure().library_path``).
    """
    return ServerManager(library_path=library_path).start_server(model_path, preset=preset, **options)
