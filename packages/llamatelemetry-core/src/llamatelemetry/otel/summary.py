"""Terminal views of finished spans: a tree with durations and the figures that matter per span."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["render_span_tree", "span_duration_ms"]


def span_duration_ms(span: ReadableSpan) -> float:
    """The span's duration in milliseconds (0 for an unfinished span)."""
    if span.start_time is None or span.end_time is None:
        return 0.0
    return (span.end_time - span.start_time) / 1e6


def _default_details(span: ReadableSpan) -> str:
    a = dict(span.attributes or {})
    parts = []
    for key, label in (("gen_ai.usage.input_tokens", "in"), ("gen_ai.usage.output_tokens", "out"),
                       ("gen_ai.usage.cache_read.input_tokens", "cached")):
        if key in a:
            parts.append(f"{label}={a[key]}")
    ttfc = a.get("gen_ai.response.time_to_first_chunk", a.get("llamatelemetry.response.time_to_first_token"))
    if isinstance(ttfc, (int, float)):
        parts.append(f"ttft={ttfc * 1e3:.1f}ms")
    if span.status.status_code.name == "ERROR":
        parts.append(f"ERROR {a.get('error.type', '')}".rstrip())
    return " ".join(parts)


def render_span_tree(
    spans: Iterable[ReadableSpan],
    *,
    details: Callable[[ReadableSpan], str] = _default_details,
    width: int = 48,
) -> str:
    """Draw spans as trees (one per trace), children under parents in start order, with durations."""
    spans = list(spans)
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in by_id else None
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: s.start_time or 0)

    lines: list[str] = []

    def walk(span: ReadableSpan, prefix: str, connector: str, child_prefix: str) -> None:
        label = f"{prefix}{connector}{span.name}"
        extra = details(span)
        lines.append(f"{label:<{width}} {span_duration_ms(span):>10.1f} ms  {extra}".rstrip())
        kids: Sequence[Any] = children.get(span.context.span_id if span.context else None, [])
        for index, child in enumerate(kids):
            last = index == len(kids) - 1
            walk(child, prefix + child_prefix, "└─ " if last else "├─ ", "   " if last else "│  ")

    for root in children.get(None, []):
        walk(root, "", "", "")
    return "\n".join(lines)
