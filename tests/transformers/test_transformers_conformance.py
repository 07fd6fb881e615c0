"""TransformersBackend passes the conformance suite every LLMBackend owes its users, on real transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamatelemetry.testing import BackendConformance
from llamatelemetry_transformers.backend import TransformersBackend


class TestTransformersBackendConformance(BackendConformance):
    """The suite, on the tiny Llama built in code."""

    @pytest.fixture
    def backend(self, tiny_llama_dir: Path) -> TransformersBackend:
        """A new backend on the tiny model, not started."""
        return TransformersBackend(tiny_llama_dir, device="cpu")

    @pytest.fixture
    def context_window(self) -> int:
        """The tiny model's max_position_embeddings."""
        return 256
