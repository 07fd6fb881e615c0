"""``NCCLTracer``: run a collective and record it through the instrumentor's path.

Example::

    from llamatelemetry.nccl import NCCLTracer

    tracer = NCCLTracer()
    with tracer.step(0):
        tracer.trace_all_reduce(grad, op="sum")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llamatelemetry_nccl.errors import CollectiveTracingError, NoProcessGroupError, TorchNotInstalledError
from llamatelemetry_nccl.instrumentor import TorchDistributedInstrumentor, active_instrumentor
from llamatelemetry_nccl.steps import StepContext

__all__ = ["NCCLTracer", "reduce_op"]

_REDUCE_OPS = {"sum": "SUM", "avg": "AVG", "mean": "AVG", "product": "PRODUCT", "prod": "PRODUCT", "min": "MIN",
               "max": "MAX", "band": "BAND", "bor": "BOR", "bxor": "BXOR"}


def reduce_op(op: Any) -> Any:
    """``torch.distributed.ReduceOp`` for ``"sum"``, ``"avg"``, ``"max"``, ... (a ``ReduceOp`` passes through)."""
    import torch.distributed as dist

    if not isinstance(op, str):
        return op
    name = _REDUCE_OPS.get(op.strip().lower())
    if name is None:
        raise CollectiveTracingError(f"Unknown reduce op {op!r}: use one of {sorted(_REDUCE_OPS)} or a "
                                     "torch.distributed.ReduceOp.")
    return getattr(dist.ReduceOp, name)


class NCCLTracer:
    """Runs collectives traced (all_reduce, all_gather, reduce_scatter, broadcast, barrier) and scopes steps.

    It uses the active ``TorchDistributedInstrumentor`` (from ``init(enable_nccl=True)`` or yours), or
    instruments with its own on first use (``options`` are that instrumentor's arguments). Every rank
    must make the same calls in the same order, as with any collective.
    """

    def __init__(self, instrumentor: TorchDistributedInstrumentor | None = None, **options: Any) -> None:
        self._instrumentor = instrumentor
        self._options = options

    @property
    def instrumentor(self) -> TorchDistributedInstrumentor:
        """The instrumentor that records this tracer's collectives."""
        if self._instrumentor is None:
            self._instrumentor = active_instrumentor() or TorchDistributedInstrumentor(**self._options)
        return self._instrumentor

    def _dist(self, what: str) -> Any:
        try:
            import torch.distributed as dist
        except ImportError:
            raise TorchNotInstalledError() from None
        if not dist.is_available() or not dist.is_initialized():
            raise NoProcessGroupError(what)
        self.instrumentor.instrument()
        return dist

    def step(self, number: int) -> Any:
        """``with tracer.step(n):`` one trace per training step across ranks (``TorchDistributedInstrumentor.step``)."""
        return self._step(number)

    @contextmanager
    def _step(self, number: int) -> Iterator[StepContext]:
        self._dist("NCCLTracer.step()")
        with self.instrumentor.step(number) as step:
            yield step

    def trace_all_reduce(self, tensor: Any, op: Any = "sum", *, group: Any = None, async_op: bool = False) -> Any:
        """``dist.all_reduce(tensor, op)``, traced; returns the Work when ``async_op``."""
        dist = self._dist("NCCLTracer.trace_all_reduce()")
        return dist.all_reduce(tensor, op=reduce_op(op), group=group, async_op=async_op)

    def trace_all_gather(self, output: Any, tensor: Any, *, group: Any = None, async_op: bool = False) -> Any:
        """``dist.all_gather`` into a list of tensors, or into one tensor (``all_gather_single``), traced."""
        dist = self._dist("NCCLTracer.trace_all_gather()")
        if isinstance(output, (list, tuple)):
            return dist.all_gather(list(output), tensor, group=group, async_op=async_op)
        single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return single(output, tensor, group=group, async_op=async_op)

    def trace_reduce_scatter(self, output: Any, inputs: Any, op: Any = "sum", *, group: Any = None,
                             async_op: bool = False) -> Any:
        """``dist.reduce_scatter`` from a list of tensors, or from one tensor (``reduce_scatter_single``), traced."""
        dist = self._dist("NCCLTracer.trace_reduce_scatter()")
        if isinstance(inputs, (list, tuple)):
            return dist.reduce_scatter(output, list(inputs), op=reduce_op(op), group=group, async_op=async_op)
        single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return single(output, inputs, op=reduce_op(op), group=group, async_op=async_op)

    def trace_broadcast(self, tensor: Any, src: int = 0, *, group: Any = None, async_op: bool = False) -> Any:
        """``dist.broadcast(tensor, src)``, traced."""
        dist = self._dist("NCCLTracer.trace_broadcast()")
        return dist.broadcast(tensor, src=src, group=group, async_op=async_op)

    def trace_barrier(self, *, group: Any = None, async_op: bool = False) -> Any:
        """``dist.barrier()``, traced."""
        dist = self._dist("NCCLTracer.trace_barrier()")
        return dist.barrier(group=group, async_op=async_op)
