"""A llama.cpp server (xllamacpp) with 4 parallel slots on a generated tiny model, shared by the bench tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


class BenchServer:
    """The running server: its URL, the model file and its manager."""

    def __init__(self, manager: object, base_url: str, model_path: Path) -> None:
        self.manager = manager
        self.base_url = base_url
        self.model_path = model_path


@pytest.fixture(scope="package")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama GGUF, with a trained context long enough for the built-in long prompts."""
    testing = pytest.importorskip("llamatelemetry_llamacpp.testing")
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    return Path(testing.write_tiny_gguf(tmp_path_factory.mktemp("bench-model") / "tiny-bench.gguf", seed=0,
                                        n_ctx_train=4096))


@pytest.fixture(scope="package")
def bench_server(bench_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchServer]:
    """llama.cpp's own server on the tiny model: 4 slots of 1024 tokens, /metrics and /slots on."""
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    from llamatelemetry_llamacpp.server import ServerManager

    manager = ServerManager(log_dir=tmp_path_factory.mktemp("bench-server-logs"))
    manager.start_server(bench_model, gpu_layers=0, ctx_size=4096, port=None, n_parallel=4, threads=2,
                         flash_attn=False, metrics=True, slots=True)
    try:
        yield BenchServer(manager, manager.base_url, bench_model)
    finally:
        manager.stop_server()
