"""OpenTelemetry setup: providers, tracers, meters, exporters and samplers."""

from __future__ import annotations

from typing import Any

from llamatelemetry._runtime import cached_instruments, get_meter, get_tracer

__all__ = ["setup_provider", "get_tracer", "get_meter", "cached_instruments"]


def setup_provider(service_name: str | None = None, otlp_endpoint: str | None = None, **options: Any) -> Any:
    """Set up llamatelemetry's tracer and meter providers (as ``llamatelemetry.init``) and return the tracer provider.

    Takes every keyword argument ``init()`` takes. An application's existing provider is
    returned (and used) unless ``use_existing_providers=False``.
    """
    from llamatelemetry._runtime import init

    return init(service_name=service_name, otlp_endpoint=otlp_endpoint, **options).tracer_provider
