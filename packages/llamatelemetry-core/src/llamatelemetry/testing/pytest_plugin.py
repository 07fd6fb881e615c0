"""pytest fixtures for plugin authors (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamatelemetry.plugins import PluginManager
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager


@pytest.fixture
def llamatelemetry_telemetry() -> Iterator[InMemoryTelemetry]:
    """Telemetry initialized with in-memory exporters; shut down after the test."""
    with InMemoryTelemetry() as telemetry:
        yield telemetry


@pytest.fixture
def llamatelemetry_plugin_manager() -> Iterator[PluginManager]:
    """A fresh plugin manager without installed plugins; register yours with ``.register(obj)``."""
    with fresh_plugin_manager() as manager:
        yield manager
