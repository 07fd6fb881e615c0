"""Semantic conventions: ``gen_ai`` (OpenTelemetry GenAI v1.41), ``llamatelemetry`` (our namespace),
``metrics`` (instruments and buckets), ``content`` (opt-in capture) and ``mapping`` (attributes on spans)."""

from __future__ import annotations

from llamatelemetry.semconv import gen_ai, llamatelemetry

__all__ = ["gen_ai", "llamatelemetry"]
