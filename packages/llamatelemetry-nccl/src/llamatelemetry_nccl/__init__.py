"""llamatelemetry's NCCL plugin (torch.distributed instrumentation is to come)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
