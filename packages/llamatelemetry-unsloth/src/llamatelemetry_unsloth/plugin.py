"""Entry point of the Unsloth plugin; it registers no hooks yet."""

from __future__ import annotations
