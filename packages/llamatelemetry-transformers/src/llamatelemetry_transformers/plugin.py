"""Entry point of the transformers plugin; it registers no hooks yet."""

from __future__ import annotations
