"""A tiny Llama (256 wide, 2 layers) with a tokenizer trained here: no hub, CPU, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason='pip install "llamatelemetry-unsloth[engine]"')
pytest.importorskip("transformers", reason='pip install "llamatelemetry-unsloth[engine]"')
pytest.importorskip("peft", reason='pip install "llamatelemetry-unsloth[engine]"')


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models train fastest single-threaded, and the machine is shared."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama with its tokenizer (byte-fallback BPE)."""
    from llamatelemetry_unsloth.testing import write_model

    return write_model(tmp_path_factory.mktemp("models") / "tiny-llama-256", seed=0)
