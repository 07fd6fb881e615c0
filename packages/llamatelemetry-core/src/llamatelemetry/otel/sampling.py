"""Trace samplers by name, as ``OTEL_TRACES_SAMPLER`` names them."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from llamatelemetry.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["configure_sampler", "check_ratio", "SAMPLER_NAMES"]

log = logging.getLogger("llamatelemetry.config")

SAMPLER_NAMES: tuple[str, ...] = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def check_ratio(arg: str | float | None, source: str) -> float:
    """``arg`` as a sampling ratio (``None`` or empty: 1.0); ``ConfigurationError`` naming ``source`` if not one."""
    if arg is None or arg == "":
        return 1.0
    try:
        ratio = float(arg)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{source}={arg!r} is not a number: give a sampling ratio between 0 and 1.") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigurationError(f"{source}={arg!r} is outside [0, 1]: give a sampling ratio between 0 and 1.")
    return ratio


def _ratio(arg: str | float | None, source: str, from_env: bool) -> float:
    if not from_env:
        return check_ratio(arg, source)
    try:
        return check_ratio(arg, source)
    except ConfigurationError as exc:
        log.warning("llamatelemetry ignores %s: %s; using the default ratio, 1.0.", source, exc)
        return 1.0


def configure_sampler(name: str | None = None, arg: str | float | None = None) -> Sampler:
    """Build a sampler from ``name`` and ratio ``arg`` (else ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``).

    ``None`` and no variable give ``parentbased_always_on``, the OpenTelemetry default. A bad
    argument raises ``ConfigurationError``; a bad variable is warned about and ignored, as the
    OpenTelemetry SDK does.
    """
    from opentelemetry.sdk.trace import sampling

    source = "configure_sampler(name=...)"
    if name is None:
        name, source = os.environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on", "OTEL_TRACES_SAMPLER"
        if name.strip().lower() not in SAMPLER_NAMES:
            log.warning("llamatelemetry ignores OTEL_TRACES_SAMPLER=%r: not a sampler (use one of %s); using the "
                        "default, parentbased_always_on.", name, ", ".join(SAMPLER_NAMES))
            name = "parentbased_always_on"
    arg_source = "configure_sampler(arg=...)"
    env_arg = arg is None
    if arg is None:
        arg, arg_source = os.environ.get("OTEL_TRACES_SAMPLER_ARG"), "OTEL_TRACES_SAMPLER_ARG"
    key = name.strip().lower()
    if key == "always_on":
        return sampling.ALWAYS_ON
    if key == "always_off":
        return sampling.ALWAYS_OFF
    if key == "traceidratio":
        return sampling.TraceIdRatioBased(_ratio(arg, arg_source, env_arg))
    if key == "parentbased_always_on":
        return sampling.ParentBased(sampling.ALWAYS_ON)
    if key == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if key == "parentbased_traceidratio":
        return sampling.ParentBased(sampling.TraceIdRatioBased(_ratio(arg, arg_source, env_arg)))
    raise ConfigurationError(f"{source}={name!r} is not a sampler: use one of {', '.join(SAMPLER_NAMES)}.")
