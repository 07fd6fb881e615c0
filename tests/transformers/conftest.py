"""Tiny random Llama and GPT-2 models built in code, with a tokenizer trained here: no hub, CPU only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason='pip install "llamatelemetry-transformers[engine]"')
pytest.importorskip("transformers", reason='pip install "llamatelemetry-transformers[engine]"')


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a chat template whose greedy decoding never ends early (exact token counts)."""
    from llamatelemetry_transformers.testing import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama", seed=0, eos_reachable=False)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 without a chat template (a base model)."""
    from llamatelemetry_transformers.testing import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2", seed=1, chat_template=None,
                            eos_reachable=False)


@pytest.fixture(scope="session")
def tokenizer(tiny_llama_dir: Path) -> Any:
    """The tiny Llama's tokenizer, loaded from its folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)


@pytest.fixture
def llama(tiny_llama_dir: Path) -> Any:
    """A fresh tiny Llama loaded from its folder (tests may instrument or change it)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True).eval()
