"""Entry point of the __name__ plugin: its hook implementations (see llamatelemetry.plugins.hookspecs)."""

from __future__ import annotations

from typing import Any

from llamatelemetry.plugins import hookimpl


@hookimpl
def llamatelemetry_request_start(span: Any, request: Any) -> None:
    """Enrich every generation span (runs on the caller's thread: keep it cheap)."""
    if span.is_recording():
        span.set_attribute("__name__.enabled", True)
