"""Entry point of the NCCL plugin; it registers no hooks yet."""

from __future__ import annotations
