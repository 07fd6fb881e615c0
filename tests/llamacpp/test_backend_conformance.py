"""LlamaCppBackend passes the conformance suite every LLMBackend owes its users, on real llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamatelemetry.testing import BackendConformance
from llamatelemetry_llamacpp.backend import LlamaCppBackend

pytest.importorskip("llama_cpp", reason='pip install "llamatelemetry-llamacpp[engine]"')


class TestLlamaCppBackendConformance(BackendConformance):
    """The suite, on the generated tiny model."""

    @pytest.fixture
    def backend(self, tiny_gguf: Path) -> LlamaCppBackend:
        """A new backend on the tiny model, not started."""
        return LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1)

    @pytest.fixture
    def context_window(self) -> int:
        """The n_ctx the backend is created with."""
        return 256
