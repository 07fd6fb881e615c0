"""An example third-party llamatelemetry backend over any OpenAI-compatible chat server."""

from __future__ import annotations

from llamatelemetry_example_backend.backend import OpenAICompatibleBackend

__all__ = ["OpenAICompatibleBackend"]
