"""Entry point of the Unsloth plugin: what it registers with llamatelemetry.

Importing this module imports neither torch, transformers, peft nor unsloth. While telemetry runs
(``init()`` to ``shutdown()``), fine-tuning is instrumented (``llamatelemetry_unsloth.instrument``);
the ``pipeline-demo`` command runs the traced fine-tune -> merge -> GGUF -> quantize -> benchmark ->
deploy pipeline.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from llamatelemetry.plugins import hookimpl

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from llamatelemetry.config import TelemetrySettings


@hookimpl
def llamatelemetry_telemetry_start(settings: TelemetrySettings, tracer_provider: TracerProvider,
                                   meter_provider: MeterProvider) -> None:
    """Instrument fine-tuning while telemetry runs (classes imported later are patched on import)."""
    from llamatelemetry_unsloth.instrument import instrument_training

    if settings.enabled:
        instrument_training()


@hookimpl
def llamatelemetry_telemetry_shutdown(settings: TelemetrySettings) -> None:
    """Put the fine-tuning classes back as they were."""
    from llamatelemetry_unsloth.instrument import uninstrument_training

    uninstrument_training()


@hookimpl
def llamatelemetry_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``llamatelemetry pipeline-demo``: the whole traced pipeline on a tiny model, offline."""
    from llamatelemetry_unsloth.demo import add_parser

    add_parser(subparsers)
