"""Opt-in capture of prompts and completions, with redaction before anything leaves the process.

Nothing is captured by default. ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (or
``init(capture_content=...)``) switches it on:

- ``NO_CONTENT`` (default): no message content anywhere;
- ``SPAN_ONLY``: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions`` as JSON span attributes;
- ``EVENT_ONLY``: the same attributes on a ``gen_ai.client.inference.operation.details`` span event;
- ``SPAN_AND_EVENT``: both.

Content goes through every ``llamatelemetry_redact_messages`` hook before it is set; if a
redaction hook raises, no content at all is recorded for that request.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llamatelemetry.semconv import gen_ai

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["CaptureMode", "ENV_CAPTURE_CONTENT", "parse_capture_mode", "to_semconv_messages", "record_content"]

log = logging.getLogger("llamatelemetry.semconv")

ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


class CaptureMode(enum.Enum):
    """Where prompt and completion content is recorded."""

    NO_CONTENT = "NO_CONTENT"
    SPAN_ONLY = "SPAN_ONLY"
    EVENT_ONLY = "EVENT_ONLY"
    SPAN_AND_EVENT = "SPAN_AND_EVENT"

    @property
    def on_span(self) -> bool:
        """Content goes on span attributes."""
        return self in (CaptureMode.SPAN_ONLY, CaptureMode.SPAN_AND_EVENT)

    @property
    def on_event(self) -> bool:
        """Content goes on a span event."""
        return self in (CaptureMode.EVENT_ONLY, CaptureMode.SPAN_AND_EVENT)


_BOOLEAN_ALIASES = {"true": CaptureMode.SPAN_ONLY, "1": CaptureMode.SPAN_ONLY,
                    "false": CaptureMode.NO_CONTENT, "0": CaptureMode.NO_CONTENT, "": CaptureMode.NO_CONTENT}


def parse_capture_mode(value: str | bool | CaptureMode | None, *, source: str = ENV_CAPTURE_CONTENT) -> CaptureMode:
    """Read a capture mode from a name, a boolean or ``None`` (NO_CONTENT); raise on an unknown name."""
    if value is None:
        return CaptureMode.NO_CONTENT
    if isinstance(value, CaptureMode):
        return value
    if isinstance(value, bool):
        return CaptureMode.SPAN_ONLY if value else CaptureMode.NO_CONTENT
    text = value.strip()
    if text.lower() in _BOOLEAN_ALIASES:
        return _BOOLEAN_ALIASES[text.lower()]
    try:
        return CaptureMode(text.upper())
    except ValueError:
        allowed = ", ".join(mode.value for mode in CaptureMode)
        raise ValueError(f"{source}={value!r} is not a capture mode: use one of {allowed}.") from None


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, Sequence):
        parts: list[dict[str, Any]] = []
        for item in content:
            if isinstance(item, Mapping) and item.get("type") == "text":
                parts.append({"type": "text", "content": str(item.get("text", item.get("content", "")))})
            elif isinstance(item, Mapping):
                parts.append({"type": str(item.get("type", "unknown"))})
            else:
                parts.append({"type": "text", "content": str(item)})
        return parts
    return [{"type": "text", "content": "" if content is None else str(content)}]


def to_semconv_messages(messages: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Convert OpenAI-style chat messages to (system instruction parts, input messages) of semconv v1.41."""
    system: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    for message in messages:
        role = str(message.get("role", "user"))
        parts = _parts(message.get("content"))
        if role == "system":
            system.extend(parts)
        else:
            inputs.append({"role": role, "parts": parts})
    return system, inputs


def record_content(
    span: Span,
    mode: CaptureMode,
    *,
    input_messages: Iterable[Mapping[str, Any]] | None = None,
    output_text: str | None = None,
    finish_reason: str | None = None,
) -> None:
    """Put (redacted) content on ``span`` as ``mode`` says; does nothing for NO_CONTENT."""
    if mode is CaptureMode.NO_CONTENT or not span.is_recording():
        return
    from llamatelemetry.plugins import get_plugin_manager

    pm = get_plugin_manager()
    attributes: dict[str, str] = {}
    if input_messages is not None:
        system, inputs = to_semconv_messages(input_messages)
        if system:
            wrapped = [{"role": "system", "parts": system}]
            if not pm.redact_messages(wrapped, "system"):
                return
            attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS] = json.dumps(
                [part for message in wrapped for part in message.get("parts", [])], ensure_ascii=False)
        if not pm.redact_messages(inputs, "input"):
            return
        attributes[gen_ai.GEN_AI_INPUT_MESSAGES] = json.dumps(inputs, ensure_ascii=False)
    if output_text is not None:
        output: dict[str, Any] = {"role": "assistant", "parts": _parts(output_text)}
        if finish_reason:
            output["finish_reason"] = finish_reason
        outputs = [output]
        if not pm.redact_messages(outputs, "output"):
            return
        attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES] = json.dumps(outputs, ensure_ascii=False)
    if not attributes:
        return
    if mode.on_span:
        span.set_attributes(attributes)
    if mode.on_event:
        span.add_event(gen_ai.GEN_AI_CLIENT_INFERENCE_OPERATION_DETAILS, attributes)
