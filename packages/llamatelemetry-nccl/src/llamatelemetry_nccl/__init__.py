"""llamatelemetry's NCCL plugin: OpenTelemetry tracing of torch.distributed collectives.

``TorchDistributedInstrumentor`` patches the ``ProcessGroup`` methods (every collective and
point-to-point op, FSDP2's and DDP comm hooks' included), times each op to its completion, computes
bytes and bus bandwidth the nccl-tests way, finds the rank that arrived last, groups each training
step's spans into one trace across ranks, and flags hangs. ``NCCLTracer`` runs collectives through it.
Reachable as ``llamatelemetry.nccl``; ``init(enable_nccl=True)`` instruments automatically.
"""

from __future__ import annotations

__version__ = "0.1.0"

from llamatelemetry_nccl.errors import (
    CollectiveTracingError,
    NoProcessGroupError,
    SpansModeError,
    TorchNotInstalledError,
)
from llamatelemetry_nccl.instrumentor import TorchDistributedInstrumentor, active_instrumentor
from llamatelemetry_nccl.steps import StepContext, step_trace_id
from llamatelemetry_nccl.stragglers import Arrival
from llamatelemetry_nccl.tracer import NCCLTracer

__all__ = [
    "__version__",
    "Arrival",
    "CollectiveTracingError",
    "NCCLTracer",
    "NoProcessGroupError",
    "SpansModeError",
    "StepContext",
    "TorchDistributedInstrumentor",
    "TorchNotInstalledError",
    "active_instrumentor",
    "step_trace_id",
]
