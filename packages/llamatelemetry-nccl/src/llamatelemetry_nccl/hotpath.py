"""The per-collective hot path: wrappers on the ``ProcessGroup`` methods that append one record to a ring.

Everything here runs on the thread that issues the collective, once per op, so it does the least
possible: read the clock, call the original method, note the sizes and the sequence number, hook
completion (a future callback on gloo; the NCCL completion hook is registered once per group), and
append. Turning records into metrics and spans is the background processor's job.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

#: method -> (op, index of the argument whose size counts, index of the reduce-op/root/peer argument, p2p).
#: The size argument is one rank's buffer (all_gather: the input chunk; reduce_scatter: the output chunk).
METHODS: dict[str, tuple[str, int | None, int | None, bool]] = {
    "allreduce": ("all_reduce", 0, 1, False),
    "allreduce_coalesced": ("all_reduce", 0, 1, False),
    "broadcast": ("broadcast", 0, 1, False),
    "reduce": ("reduce", 0, 1, False),
    "allgather": ("all_gather", 1, None, False),
    "all_gather_single": ("all_gather", 1, None, False),
    "_allgather_base": ("all_gather", 1, None, False),
    "allgather_coalesced": ("all_gather", 1, None, False),
    "all_gather_single_coalesced": ("all_gather", 1, None, False),
    "allgather_into_tensor_coalesced": ("all_gather", 1, None, False),
    "gather": ("gather", 1, None, False),
    "scatter": ("scatter", 0, None, False),
    "reduce_scatter": ("reduce_scatter", 0, 2, False),
    "reduce_scatter_single": ("reduce_scatter", 0, 2, False),
    "_reduce_scatter_base": ("reduce_scatter", 0, 2, False),
    "reduce_scatter_single_coalesced": ("reduce_scatter", 0, 2, False),
    "reduce_scatter_tensor_coalesced": ("reduce_scatter", 0, 2, False),
    "all_to_all_single": ("all_to_all", 1, None, False),
    "alltoall_base": ("all_to_all", 1, None, False),
    "alltoall": ("all_to_all", 1, None, False),
    "send": ("send", 0, 1, True),
    "recv": ("recv", 0, 1, True),
    "recv_anysource": ("recv", 0, None, True),
    "barrier": ("barrier", None, None, False),
}

#: How a group's ops are timed to completion.
MODE_FUTURE = "future"  # gloo: Work.get_future() completes with the collective
MODE_HOOK = "hook"  # NCCL: ProcessGroupNCCL's completion hook (CUDA-event duration)
MODE_POLL = "poll"  # no usable future (point-to-point on gloo, other backends): poll Work.is_completed()

#: Marks the end of a step in the ring (blocks of arrival exchanges close there on every rank).
STEP_END = object()

_time_ns = time.time_ns
_get_ident = threading.get_ident
_getframe = sys._getframe


class PendingOp:
    """One launched collective, filled in by the hot path and its completion; the processor reads it."""

    __slots__ = (
        "arrival",
        "async_op",
        "aux",
        "context",
        "count",
        "dtype",
        "error",
        "esize",
        "finalized",
        "gpu_s",
        "in_block",
        "mode",
        "op",
        "pg",
        "seq",
        "site",
        "span",
        "stalled",
        "step",
        "t0",
        "t1",
        "t_ret",
        "thread",
        "waited",
        "work",
    )

    def __init__(self, op: str, pg: Any, count: int, esize: int, dtype: Any, aux: Any, t0: int, seq: int,
                 step: Any, thread: int) -> None:
        self.op = op
        self.pg = pg
        self.count = count
        self.esize = esize
        self.dtype = dtype
        self.aux = aux
        self.t0 = t0
        self.t1 = 0
        self.t_ret = 0
        self.seq = seq
        self.step = step
        self.thread = thread
        self.work: Any = None
        self.mode = MODE_FUTURE
        self.error: str | None = None
        self.site: tuple[str, str, int] | None = None
        self.async_op: bool | None = None
        self.context: Any = None
        self.stalled = False
        self.span: Any = None
        self.gpu_s: float | None = None
        self.in_block = False
        self.arrival: Any = None
        self.finalized = False
        self.waited = False

    def done(self, future: Any) -> None:
        """Future callback (gloo's thread): the collective completed now."""
        self.t1 = _time_ns()
        try:
            future.value()
        except Exception as exc:  # a failed collective: the processor puts error.type on its span
            self.error = f"{type(exc).__module__}.{type(exc).__qualname__}"


def sizes(value: Any, tensor_type: Any) -> tuple[int, int, Any]:
    """``(element count, element size, dtype)`` of a tensor or a (nested) list of them."""
    if isinstance(value, tensor_type):
        return value.numel(), value.element_size(), value.dtype
    count = 0
    esize = 0
    dtype = None
    if isinstance(value, (list, tuple)):
        for item in value:
            c, e, d = sizes(item, tensor_type)
            count += c
            if d is not None and dtype is None:
                esize, dtype = e, d
    return count, esize, dtype


class Run:
    """What the hot path needs while instrumentation is active: the ring, counters, the current step."""

    def __init__(self, ring_size: int, tensor_type: Any, mode_of: Callable[[Any], str],
                 capture_all: bool, c10d_files: tuple[str, ...], context_getter: Callable[[], Any]) -> None:
        self.ring: deque[Any] = deque(maxlen=ring_size)
        self.seqs: dict[Any, int] = {}
        self.modes: dict[Any, str] = {}
        self.issued = 0
        self.step: Any = None
        self.capture_all = capture_all
        self.capture = capture_all
        self.side_group: Any = None
        self.wake = threading.Event()
        # Works timed by polling, by Work: their wait() returning is the fallback completion time.
        self.waiting: dict[Any, PendingOp] = {}
        self._tensor_type = tensor_type
        self._mode_of = mode_of
        self._c10d_files = c10d_files
        self._context_getter = context_getter

    def launched(self, work: Any, pg: Any, op: str, sized: Any, aux: Any, t0: int, p2p: bool) -> None:
        """Record a launched op (hot path)."""
        if sized is None:
            count = esize = 0
            dtype = None
        elif type(sized) is self._tensor_type:
            count = sized.numel()
            esize = sized.element_size()
            dtype = sized.dtype
        else:
            count, esize, dtype = sizes(sized, self._tensor_type)
        seqs = self.seqs
        seq = seqs.get(pg, 0) + 1
        seqs[pg] = seq
        self.issued += 1
        record = PendingOp(op, pg, count, esize, dtype, aux, t0, seq, self.step, _get_ident())
        if self.capture:
            self._call_site(record)
        mode = self.modes.get(pg)
        if mode is None:
            mode = self.modes[pg] = self._mode_of(pg)
        if p2p or mode == MODE_POLL:
            self._poll(record, work)
            return
        if mode == MODE_FUTURE:
            try:
                work.get_future().add_done_callback(record.done)
            except RuntimeError:  # a Work with no future (gloo's reduce_scatter, p2p): poll it
                self._poll(record, work)
                return
        else:
            record.mode = mode
            record.t_ret = _time_ns()
        self.ring.append(record)

    def _poll(self, record: PendingOp, work: Any) -> None:
        record.mode = MODE_POLL
        record.work = work
        record.t_ret = _time_ns()
        self.waiting[work] = record
        self.ring.append(record)
        self.wake.set()

    def launch_failed(self, pg: Any, op: str, t0: int, exc: BaseException) -> None:
        """Record an op whose launch raised."""
        seq = self.seqs.get(pg, 0) + 1
        self.seqs[pg] = seq
        self.issued += 1
        record = PendingOp(op, pg, 0, 0, None, None, t0, seq, self.step, _get_ident())
        record.t1 = _time_ns()
        record.mode = "launch"
        record.error = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self.ring.append(record)

    def _call_site(self, record: PendingOp) -> None:
        # Frames: 0 this, 1 launched, 2 the wrapper, 3 its caller (a dist.* function or direct PG user).
        frame: Any = _getframe(3)
        files = self._c10d_files
        if frame.f_code.co_filename in files:
            # The dist.* layer: its functions say whether the op is async (and call each other: send -> isend).
            called: list[str] = []
            async_op: Any = None
            while frame is not None and (frame.f_code.co_filename in files or _is_decorator(frame.f_code)):
                called.append(frame.f_code.co_name)
                if async_op is None and frame.f_code.co_filename in files:
                    async_op = frame.f_locals.get("async_op")
                frame = frame.f_back
            if "batch_isend_irecv" in called:
                record.async_op = True
            elif "send" in called or "recv" in called:
                record.async_op = False
            elif called[0] in ("isend", "irecv"):
                record.async_op = True
            elif async_op is not None:
                record.async_op = bool(async_op)
        if frame is not None:
            code = frame.f_code
            record.site = (getattr(code, "co_qualname", code.co_name), code.co_filename, frame.f_lineno)
        record.context = self._context_getter()


def _is_decorator(code: Any) -> bool:
    # typing_extensions.deprecated / warnings.deprecated wrap some dist.* functions.
    return code.co_name == "wrapper" and "deprecated" in getattr(code, "co_qualname", "")


class Active:
    """The one active run (class-level patching makes instrumentation process-wide)."""

    run: Run | None = None


def make_wrapper(original: Any, op: str, arg_index: int | None, aux_index: int | None, p2p: bool) -> Any:
    """The traced replacement of one ``ProcessGroup`` method."""

    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        run = Active.run
        if run is None or self is run.side_group:
            return original(self, *args, **kwargs)
        t0 = _time_ns()
        try:
            work = original(self, *args, **kwargs)
        except BaseException as exc:
            run.launch_failed(self, op, t0, exc)
            raise
        n = len(args)
        run.launched(work, self, op, args[arg_index] if arg_index is not None and n > arg_index else None,
                     args[aux_index] if aux_index is not None and n > aux_index else None, t0, p2p)
        return work

    traced.__name__ = getattr(original, "__name__", op)
    traced.__qualname__ = f"ProcessGroup.{traced.__name__}"
    traced.__doc__ = getattr(original, "__doc__", None)
    traced.__wrapped__ = original  # type: ignore[attr-defined]
    return traced


def make_wait_wrapper(original: Any) -> Any:
    """The replacement of ``Work.wait``: its return is the completion time of a Work that has no other signal."""

    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        run = Active.run
        if run is not None and run.waiting:
            record = run.waiting.pop(self, None)
            if record is not None and not record.t1:
                record.waited = True
                record.t1 = _time_ns()
        return result

    wait.__doc__ = getattr(original, "__doc__", None)
    wait.__wrapped__ = original  # type: ignore[attr-defined]
    return wait
