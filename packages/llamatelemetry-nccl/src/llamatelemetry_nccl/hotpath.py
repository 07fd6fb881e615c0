"""The per-collective hot path: wrappers on the ``ProcessGroup`` methods that append one record to a ring.

Everything here runs on the thread that issues the collective, once per op, so it does the least
possible: read the clock, call the original method, note the sizes and the sequence number, hook
completion (a future callback on gloo; the NCCL completion hook is registered once per group), and
append. Turning records into metrics and spans is the background processor's job.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llamatelemetry.decorators import error_type

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
MODE_LAUNCH = "launch"  # nothing but the launch is known (the launch raised, or the Work was dropped unwaited)

#: Marks the end of a step in the ring (blocks of arrival exchanges close there on every rank).
STEP_END = object()

# Slots of the raw record the hot path appends: a list, because making one costs a tenth of an object.
OP, PG, COUNT, ESIZE, DTYPE, AUX, T0, SEQ, STEP, THREAD, WORK, T_WAIT, P2P, SITE, ERROR = range(15)

_time_ns = time.time_ns
_get_ident = threading.get_ident
_getframe = sys._getframe


class PendingOp:
    """One launched collective, made by the processor from the hot path's raw record; filled in until it ends."""

    __slots__ = ("arrival", "async_op", "aux", "context", "count", "dtype", "error", "esize", "finalized", "gpu_s",
                 "in_block", "mode", "op", "op_type", "pg", "raw", "seq", "site", "span", "stalled", "step", "t0",
                 "t_done", "thread", "work")

    def __init__(self, raw: list[Any]) -> None:
        self.raw = raw
        self.op: str = raw[OP]
        self.pg: Any = raw[PG]
        self.count: int = raw[COUNT]
        self.esize: int = raw[ESIZE]
        self.dtype: Any = raw[DTYPE]
        self.aux: Any = raw[AUX]
        self.t0: int = raw[T0]
        self.seq: int = raw[SEQ]
        self.step: Any = raw[STEP]
        self.thread: int = raw[THREAD]
        self.work: Any = raw[WORK]
        raw[WORK] = None
        site = raw[SITE]
        self.site: tuple[str, str, int] | None = site[0] if site else None
        self.async_op: bool | None = site[1] if site else None
        self.context: Any = site[2] if site else None
        self.t_done = 0
        self.mode = MODE_FUTURE
        self.error: str | None = None
        self.stalled = False
        self.span: Any = None
        self.gpu_s: float | None = None
        self.in_block = False
        self.arrival: Any = None
        self.finalized = False
        #: The Work's c10d OpType (NCCL groups timed by the completion hook: infos are matched on it).
        self.op_type: Any = None

    @property
    def t_wait(self) -> int:
        """When ``wait()`` on its Work returned (0: not yet)."""
        return int(self.raw[T_WAIT])

    @property
    def t1(self) -> int:
        """The op's end: the earliest completion signal (0 while none has come)."""
        done, waited = self.t_done, self.raw[T_WAIT]
        if self.mode == MODE_HOOK:
            return done  # on NCCL, wait() returning says nothing about the GPU
        if done and waited:
            return min(done, int(waited))
        return int(done or waited)

    @property
    def waited(self) -> bool:
        """Whether the end came from ``wait()`` returning rather than a completion signal."""
        waited = self.raw[T_WAIT]
        return self.mode != MODE_HOOK and bool(waited) and (not self.t_done or waited < self.t_done)

    def done(self, future: Any) -> None:
        """Future callback (gloo's thread, or the processor's when already complete): the op completed."""
        self.t_done = _time_ns()
        try:
            future.value()
        except Exception as exc:  # a failed collective: the processor puts error.type on its span
            self.error = error_type(exc)


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

    def __init__(self, ring_size: int, tensor_type: Any, capture_all: bool, c10d_files: tuple[str, ...],
                 context_getter: Callable[[], Any]) -> None:
        self.ring: deque[Any] = deque(maxlen=ring_size)
        self.seqs: dict[Any, int] = {}
        self.issued = 0
        self.step: Any = None
        self.capture_all = capture_all
        self.capture = capture_all
        self.side_group: Any = None
        # The processor sleeps on the doorbell between ticks; flushes and exchange results ring it.
        self.doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.sleeping = False
        # Raw records by Work: wait() returning stamps them (the completion time of a sync op, and the
        # fallback of a Work that has no other signal).
        self.waiting: dict[Any, list[Any]] = {}
        self._tensor_type = tensor_type
        self._c10d_files = c10d_files
        self._context_getter = context_getter

    def ring_doorbell(self) -> None:
        """Wake the processor (if it sleeps)."""
        if self.sleeping:
            self.sleeping = False
            self.doorbell.put(None)

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
        record = [op, pg, count, esize, dtype, aux, t0, seq, self.step, _get_ident(), work, 0, p2p,
                  self._call_site() if self.capture else None]
        self.waiting[work] = record
        # No wake-up here: the processor's next tick (a few ms) attaches the completion callback, so the
        # caller never pays for it nor for a thread switch; sync ops are stamped by wait() meanwhile.
        self.ring.append(record)

    def launch_failed(self, pg: Any, op: str, t0: int, exc: BaseException) -> None:
        """Record an op whose launch raised."""
        seq = self.seqs.get(pg, 0) + 1
        self.seqs[pg] = seq
        self.issued += 1
        error = error_type(exc)
        self.ring.append([op, pg, 0, 0, None, None, t0, seq, self.step, _get_ident(), None, _time_ns(), False, None,
                          error])
        self.ring_doorbell()

    def _call_site(self) -> tuple[tuple[str, str, int] | None, bool | None, Any]:
        # Frames: 0 this, 1 launched, 2 the wrapper, 3 its caller (a dist.* function or direct PG user).
        frame: Any = _getframe(3)
        files = self._c10d_files
        async_op: Any = None
        if frame.f_code.co_filename in files:
            # The dist.* layer: its functions say whether the op is async (and call each other: send -> isend).
            called: list[str] = []
            local: Any = None
            while frame is not None and (frame.f_code.co_filename in files or _is_decorator(frame.f_code)):
                called.append(frame.f_code.co_name)
                if local is None and frame.f_code.co_filename in files:
                    local = frame.f_locals.get("async_op")
                frame = frame.f_back
            if "batch_isend_irecv" in called:
                async_op = True
            elif "send" in called or "recv" in called:
                async_op = False
            elif called[0] in ("isend", "irecv"):
                async_op = True
            elif local is not None:
                async_op = bool(local)
        site = None
        if frame is not None:
            code = frame.f_code
            site = (getattr(code, "co_qualname", code.co_name), code.co_filename, frame.f_lineno)
        return site, async_op, self._context_getter()


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
            if record is not None and not record[T_WAIT]:
                record[T_WAIT] = _time_ns()
        return result

    wait.__doc__ = getattr(original, "__doc__", None)
    wait.__wrapped__ = original  # type: ignore[attr-defined]
    return wait
