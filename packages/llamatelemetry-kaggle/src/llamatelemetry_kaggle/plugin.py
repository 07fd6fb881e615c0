"""Entry point of the Kaggle plugin: resource attributes when running on Kaggle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llamatelemetry.plugins import hookimpl
from llamatelemetry_kaggle.detect import detect


@hookimpl
def llamatelemetry_resource_attributes() -> Mapping[str, Any] | None:
    """Describe the Kaggle notebook on the resource; nothing off Kaggle."""
    environment = detect()
    return environment.resource_attributes() if environment is not None else None
