"""The torch GPU span enricher: CUDA memory of torch's caching allocator before and after each request.

Its hooks (``llamatelemetry_request_start`` and ``llamatelemetry_request_end``, on ``REQUEST_HOOKS``)
are registered by ``enable_request_hooks`` once CUDA is in use in this process: at telemetry
start, when ``TransformersBackend`` has loaded its model or runs a request, and before an
instrumented ``generate`` runs. Until then no request pays a hook call for it. On a recording
span it puts on the request span the current device's allocated, reserved and peak bytes at the
start, at the end, and the difference. It never imports torch and never starts CUDA.

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

from llamatelemetry.plugins import get_plugin_manager, hookimpl
from llamatelemetry_transformers import semconv as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["CudaMemory", "cuda_in_use", "read_cuda_memory", "on_request_start", "on_request_end", "CudaMemoryHooks",
           "REQUEST_HOOKS", "enable_request_hooks"]

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
    # No figures from the start (CUDA first used during the request, or the start seen on another device):
    # the "after" figures only.
    if before is not None and before.device == after.device:
        attributes.update({
            names.CUDA_ALLOCATED_DELTA: after.allocated - before.allocated,
            names.CUDA_RESERVED_DELTA: after.reserved - before.reserved,
            names.CUDA_PEAK_DELTA: after.peak - before.allocated,
        })
    span.set_attributes(attributes)


class CudaMemoryHooks:
    """The enricher's request hooks (they declare only the span: the recorder then builds no request for them)."""

    @hookimpl
    def llamatelemetry_request_start(self, span: Span) -> None:
        """CUDA memory at the request's start."""
        on_request_start(span)

    @hookimpl
    def llamatelemetry_request_end(self, span: Span) -> None:
        """CUDA memory at the request's end, and the difference from its start."""
        on_request_end(span)

    def __repr__(self) -> str:
        return "<CudaMemoryHooks (llamatelemetry-transformers)>"


#: The hooks object ``enable_request_hooks`` registers.
REQUEST_HOOKS: Final = CudaMemoryHooks()
_REQUEST_HOOKS_NAME: Final = "llamatelemetry-transformers.cuda-memory"
_registration_lock: Final = threading.Lock()


def enable_request_hooks() -> bool:
    """Register ``REQUEST_HOOKS`` with the plugin manager once CUDA is in use; whether they are registered.

    Called at telemetry start, when ``TransformersBackend`` has loaded its model or runs a request,
    and before an instrumented ``generate`` runs; call it yourself after putting CUDA to use by
    other means (your own torch code recorded with ``start_generation``). The request that first
    registers them is not enriched; those after it are. Nothing is registered while the plugin
    itself is kept out (``LLAMATELEMETRY_DISABLE_PLUGINS``, ``LLAMATELEMETRY_PLUGINS``). Cheap
    enough per generation: a ``sys.modules`` look-up and a flag check until CUDA starts, a
    registry check after. They stay registered for the process's life (CUDA does too).
    """
    if cuda_in_use() is None:
        return False
    manager = get_plugin_manager()
    if manager.is_registered(REQUEST_HOOKS):
        return True
    from llamatelemetry_transformers import plugin

    manager.ensure_loaded()
    if not manager.is_registered(plugin):
        return False  # the plugin is blocked, not allowed or failed: its hooks stay out too
    with _registration_lock:
        if not manager.is_registered(REQUEST_HOOKS):
            manager.register(REQUEST_HOOKS, name=_REQUEST_HOOKS_NAME)
    return True
