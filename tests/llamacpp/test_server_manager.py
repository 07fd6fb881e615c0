"""ServerManager against real llama.cpp servers: start, health, flags, port refusal, nothing left running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.inference import CudaInferenceConfig
from llamatelemetry_llamacpp.server import (
    PortInUseError,
    ServerKindUnavailableError,
    ServerManager,
    ServerSettings,
    ServerStartError,
    quick_start,
)

pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie still answers kill(0); its /proc status says so.
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "zombie" in status.read_text():
            return True
        time.sleep(0.05)
    return False


def test_flags_follow_config_and_kind() -> None:
    config = CudaInferenceConfig(gpu_layers=99, tensor_split="0.5,0.5", ctx_size=4096, batch_size=256, flash_attn=True)
    settings = ServerSettings(model_path=Path("/m/model.gguf"), port=9000, config=config, n_parallel=4,
                              api_key="sk-secret", alias="demo")
    flags = settings.flags("llama-server")
    pairs = dict(zip(flags[::2], flags[1::2], strict=False))
    assert pairs["-m"] == "/m/model.gguf" and pairs["--host"] == "127.0.0.1" and pairs["--port"] == "9000"
    assert (pairs["-ngl"], pairs["-c"], pairs["-b"], pairs["-fa"], pairs["-np"]) == ("99", "4096", "256", "on", "4")
    assert pairs["-ts"] == "0.5,0.5" and "--metrics" in flags and "--slots" in flags
    python_flags = settings.flags("llama-cpp-python")
    assert python_flags[python_flags.index("--tensor_split") + 1:][:2] == ["0.5", "0.5"]
    assert "sk-secret" not in repr(settings), "the API key stays out of reprs"


def test_start_health_log_and_clean_stop(smollm2_gguf: Path, tmp_path: Path) -> None:
    manager = ServerManager(log_dir=tmp_path)
    with manager:
        manager.start_server(smollm2_gguf, gpu_layers=0, ctx_size=512, port=None, flash_attn=False)
        assert manager.kind == "xllamacpp" and manager.owns_process
        assert manager.is_running()
        assert manager.base_url.startswith("http://127.0.0.1:")
        pid = manager.pid
        assert pid is not None
    assert _gone(pid), "context-manager exit stops the server"
    assert not manager.is_running()
    assert manager.log_path is not None and "listening at" in manager.log_path.read_text()
    manager.stop_server()  # twice is harmless


def test_port_refusal_and_reuse(llama_server: Any, tmp_path: Path) -> None:
    port = int(llama_server.base_url.rsplit(":", 1)[1])
    same = ServerManager().start_server(llama_server.model_path, port=port, gpu_layers=0)
    assert same.owns_process is False, "the same model's server is reused, not restarted"
    same.stop_server()
    assert ServerManager().start_server(llama_server.model_path, port=port).is_running(), "not stopped by reuse"

    other = tmp_path / "another-model.gguf"
    other.symlink_to(llama_server.model_path)
    with pytest.raises(PortInUseError, match=r"llama.cpp server with model .*SmolLM2"):
        ServerManager().start_server(other, port=port)

    with socket.create_server(("127.0.0.1", 0)) as busy:
        busy_port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match="another program"):
            ServerManager().start_server(llama_server.model_path, port=busy_port)


def test_bad_model_fails_with_the_server_log_and_leaves_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "not-a-model.gguf"
    fake.write_text("this is not a GGUF file\n")
    manager = ServerManager(log_dir=tmp_path)
    with pytest.raises(ServerStartError, match="exited with code") as caught:
        manager.start_server(fake, port=None, gpu_layers=0, timeout_s=60)
    assert "last lines of" in str(caught.value)
    assert manager.pid is None
    with pytest.raises(FileNotFoundError, match="Model file not found"):
        manager.start_server(tmp_path / "missing.gguf")


def test_health_timeout_stops_the_process(smollm2_gguf: Path, tmp_path: Path) -> None:
    manager = ServerManager(log_dir=tmp_path)
    started: list[int] = []
    original = manager._spawn

    def spawn_and_remember(*args: Any) -> None:
        original(*args)
        assert manager.pid is not None
        started.append(manager.pid)

    manager._spawn = spawn_and_remember  # type: ignore[method-assign]
    with pytest.raises(ServerStartError, match="not healthy after"):
        manager.start_server(smollm2_gguf, port=None, gpu_layers=0, timeout_s=0.01)
    assert started and _gone(started[0]), "a start that times out leaves no process"


def test_unavailable_kinds_name_the_install(smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServerKindUnavailableError, match="llama-server binary on PATH"):
        ServerManager().start_server(smollm2_gguf, kind="llama-server", port=None)
    with pytest.raises(ValueError, match=r"not a llama.cpp server kind"):
        ServerManager().start_server(smollm2_gguf, kind="ollama", port=None)


def test_presets_and_quick_start(smollm2_gguf: Path) -> None:
    server = quick_start(smollm2_gguf, preset="cpu", port=None, ctx_size=512)
    try:
        assert server.settings is not None
        assert server.settings.config.gpu_layers == 0 and server.settings.config.flash_attn is False
        assert server.settings.config.ctx_size == 512, "explicit arguments override the preset"
        assert server.is_running()
    finally:
        server.stop_server()
    with pytest.raises(ValueError, match=r"Unknown preset 'h100x8'.*kaggle_t4_dual"):
        quick_start(smollm2_gguf, preset="h100x8")


def test_no_server_outlives_the_interpreter(smollm2_gguf: Path) -> None:
    code = textwrap.dedent(f"""
        from llamatelemetry_llamacpp.server import ServerManager
        manager = ServerManager().start_server({str(smollm2_gguf)!r}, port=None, gpu_layers=0, ctx_size=512)
        print(manager.pid, flush=True)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _gone(int(result.stdout.strip())), "the at-exit hook stops servers the program forgot"


def test_llama_cpp_python_server_kind(tiny_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason='pip install "llama-cpp-python[server]"')
    pytest.importorskip("uvicorn", reason='pip install "llama-cpp-python[server]"')
    import httpx

    with ServerManager(log_dir=tmp_path) as manager:
        manager.start_server(tiny_gguf, kind="llama-cpp-python", port=None, gpu_layers=0, ctx_size=512,
                             flash_attn=False, timeout_s=120)
        assert manager.is_running()
        reply = httpx.post(f"{manager.base_url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                 "temperature": 0}).json()
        assert reply["usage"]["completion_tokens"] == 4
        pid = manager.pid
    assert pid is not None and _gone(pid)


@pytest.mark.may_skip("llama-server is an optional binary (llama.cpp's own build), not on PyPI")
def test_llama_server_binary_kind(tiny_gguf: Path, tmp_path: Path) -> None:
    import shutil

    if shutil.which("llama-server") is None:
        pytest.skip("no llama-server binary on PATH (llama.cpp's own build; not available from PyPI)")
    with ServerManager(log_dir=tmp_path) as manager:
        manager.start_server(tiny_gguf, kind="llama-server", port=None, gpu_layers=0, ctx_size=512)
        assert manager.is_running()
