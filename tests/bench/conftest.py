"""A llama.cpp server (xllamacpp) with 4 parallel slots on a generated tiny model, shared by the bench tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="package")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama GGUF, with a trained context long enough for the built-in long prompts."""
    testing = pytest.importorskip("llamatelemetry_llamacpp.testing")
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    return Path(testing.write_tiny_gguf(tmp_path_factory.mktemp("bench-model") / "tiny-bench.gguf", seed=0,
                                        n_ctx_train=4096))


@pytest.fixture(scope="package")
def bench_server(bench_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """llama.cpp's own server on the tiny model: 4 slots of 1024 tokens, /metrics and /slots on."""
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    from llamatelemetry_llamacpp.testing import running_server

    with running_server(bench_model, ctx_size=4096, n_parallel=4,
                        log_dir=tmp_path_factory.mktemp("bench-server-logs")) as server:
        yield server
