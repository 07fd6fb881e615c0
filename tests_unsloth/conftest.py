"""Real Unsloth on the CPU (nox session ``unsloth``, its own environment): a tiny Llama built here, one thread.

Unsloth is imported once for the session (it takes seconds and prints its CPU fallback notice).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("UNSLOTH_AUTO_INSTALL", "0")  # never download or compile llama.cpp
os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
unsloth = pytest.importorskip("unsloth", reason="run in the nox session 'unsloth' (pip install unsloth unsloth_zoo)")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models train fastest single-threaded, and the machine is shared."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_telemetry() -> Iterator[None]:
    """Every test starts and ends without live telemetry."""
    import llamatelemetry

    llamatelemetry.shutdown()
    yield
    llamatelemetry.shutdown()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama (256 wide, 2 layers) with its tokenizer trained here."""
    from llamatelemetry_unsloth.testing import write_model

    return write_model(tmp_path_factory.mktemp("models") / "tiny-llama-256", seed=0)


@pytest.fixture(scope="session")
def fast_language_model() -> Any:
    """Unsloth's ``FastLanguageModel``."""
    return unsloth.FastLanguageModel
