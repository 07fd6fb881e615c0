"""llamatelemetry's Kaggle plugin: detects a Kaggle notebook and describes it on the resource."""

from __future__ import annotations

from llamatelemetry_kaggle.detect import KaggleEnvironment, detect

__version__ = "0.1.0"

__all__ = ["KaggleEnvironment", "detect", "__version__"]
