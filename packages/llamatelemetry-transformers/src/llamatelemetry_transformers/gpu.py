"""The torch GPU span enricher: CUDA memory of torch's caching allocator before and after each request.

Registered through the plugin's entry point (hooks ``llamatelemetry_request_start`` and
``llamatelemetry_request_end``). On a recording span, while CUDA is in use in this process, it
puts on the request span the current device's allocated, reserved and peak bytes at the start, at
the end, and the difference. Where torch was never imported or CUDA never initialized it returns
after a dictionary look-up and a flag check: it never imports torch and never starts CUDA.

The peak is ``torch.cuda.max_memory_allocated``, which ``TransformersBackend`` resets at the start
of each request: ``peak.after`` is then the request's own peak, and ``peak.delta`` is how far the
peak rose above what was allocated when the request started. The figures are those of the current
CUDA device (``torch.cuda.current_device()``); a model placed on another device should make it
current (``torch.cuda.set_device``).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Final

import attrs

from llamatelemetry_transformers import semconv as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["CudaMemory", "cuda_in_use", "read_cuda_memory", "on_request_start", "on_request_end"]

log = logging.getLogger("llamatelemetry.transformers")

# Requests in flight: span id -> the figures at their start. Entries live from request start to end.
_started: dict[int, CudaMemory] = {}
_lock: Final = threading.Lock()


@attrs.frozen
class CudaMemory:
    """The caching allocator's figures for one device, in bytes."""

    device: int
    allocated: int
    reserved: int
    peak: int


def cuda_in_use() -> Any | None:
    """``torch.cuda`` when torch is imported and CUDA initialized in this process, else ``None`` (no work)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return None
    return cuda


def read_cuda_memory(cuda: Any) -> CudaMemory:
    """The current device's allocated, reserved and peak bytes, from one allocator statistics call."""
    device = int(cuda.current_device())
    # One nested-dict call instead of three memory_*() calls, each of which builds and flattens all stats.
    stats = cuda.memory_stats_as_nested_dict(device)
    allocated = stats.get("allocated_bytes", {}).get("all", {})
    reserved = stats.get("reserved_bytes", {}).get("all", {})
    return CudaMemory(device=device, allocated=int(allocated.get("current", 0)),
                      reserved=int(reserved.get("current", 0)), peak=int(allocated.get("peak", 0)))


def _span_key(span: Span) -> int:
    return int(span.get_span_context().span_id)


def on_request_start(span: Span) -> None:
    """Record the figures at the start of a request (only on a recording span, only while CUDA is in use)."""
    if not span.is_recording():
        return
    cuda = cuda_in_use()
    if cuda is None:
        return
    before = read_cuda_memory(cuda)
    with _lock:
        _started[_span_key(span)] = before
    span.set_attributes({
        names.CUDA_DEVICE: before.device,
        names.CUDA_ALLOCATED_BEFORE: before.allocated,
        names.CUDA_RESERVED_BEFORE: before.reserved,
        names.CUDA_PEAK_BEFORE: before.peak,
    })


def on_request_end(span: Span) -> None:
    """Record the figures at the end of a request and the differences from its start."""
    with _lock:
        before = _started.pop(_span_key(span), None)
    if not span.is_recording():
        return
    cuda = cuda_in_use()
    if cuda is None:
        return
    after = read_cuda_memory(cuda)
    attributes: dict[str, Any] = {
        names.CUDA_DEVICE: after.device,
        names.CUDA_ALLOCATED_AFTER: after.allocated,
        names.CUDA_RESERVED_AFTER: after.reserved,
        names.CUDA_PEAK_AFTER: after.peak,
    }
    # CUDA initialized during the request (the first generate on a GPU): "after" figures only.
    if before is not None and before.device == after.device:
        attributes.update({
            names.CUDA_ALLOCATED_DELTA: after.allocated - before.allocated,
            names.CUDA_RESERVED_DELTA: after.reserved - before.reserved,
            names.CUDA_PEAK_DELTA: after.peak - before.allocated,
        })
    span.set_attributes(attributes)
