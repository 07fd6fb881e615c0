"""The background processor: turns ring records into metrics and after-the-fact spans, and watches for hangs.

It runs on its own daemon thread, wakes every ``tick_s`` (sooner while point-to-point ops are being
polled), and owns everything slow: group look-ups, bandwidth arithmetic, metric recording, span
building with the op's real start and end times, blocks of arrival exchanges, the watchdog and the
progress it publishes through the process group's store (so a stalled rank can name the ranks that
never arrived).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from llamatelemetry.decorators import error_type
from llamatelemetry_nccl import semconv as names
from llamatelemetry_nccl.bandwidth import bandwidths, collective_bytes, size_bucket
from llamatelemetry_nccl.hotpath import (
    ERROR,
    MODE_FUTURE,
    MODE_HOOK,
    MODE_LAUNCH,
    MODE_POLL,
    P2P,
    STEP_END,
    T_WAIT,
    WORK,
    PendingOp,
    Run,
)
from llamatelemetry_nccl.stragglers import Arrival, ArrivalExchange

log = logging.getLogger("llamatelemetry.nccl")

#: Set before a group is made, ProcessGroupNCCL records CUDA events for every Work from the start.
ENV_NCCL_TIMING = "TORCH_NCCL_ENABLE_TIMING"
#: Ticks an NCCL completion info waits for its record before it is taken for an op we never launched.
HOOK_INFO_PATIENCE = 3

# ProcessGroupNCCL takes one completion hook per group for the life of the process (no unregistering):
# ours forwards to the processor that now traces the group, or drops the info when none does.
_hook_sinks: dict[Any, Callable[[Any, Any], None] | None] = {}


def _route(pg: Any, info: Any) -> None:
    sink = _hook_sinks.get(pg)
    if sink is not None:
        sink(pg, info)


def _timing_from_env() -> bool:
    return os.environ.get(ENV_NCCL_TIMING, "").strip().lower() in ("1", "true", "yes", "on")


def _op_type(work: Any) -> Any:
    try:
        return work._get_op_type()
    except Exception:
        return None


#: Seconds buckets for durations, skews and waits: 10 µs doubling to ~84 s.
DURATION_BUCKETS = [1e-5 * 2**i for i in range(24)]
#: Bytes/s buckets for bus bandwidth: 1 MB/s x4 up to ~1 PB/s.
BUSBW_BUCKETS = [1e6 * 4**i for i in range(16)]


@attrs.frozen
class GroupInfo:
    """What spans say about a process group (looked up once per group, off the hot path).

    Example::

        GroupInfo(name="0", desc="default_pg", size=2, rank=1, backend="gloo", ranks=(0, 1), is_default=True)
    """

    name: str
    desc: str
    size: int
    rank: int
    backend: str
    ranks: tuple[int, ...]
    is_default: bool


@attrs.frozen
class ProcessorConfig:
    """The processor's settings (from ``TorchDistributedInstrumentor``'s arguments).

    Example::

        ProcessorConfig(spans="sampled", slow_op_s=1.0, stall_timeout_s=None, arrival_every=64)
    """

    spans: str = "sampled"
    slow_op_s: float = 1.0
    stall_timeout_s: float | None = None
    arrival_every: int = 64
    tick_s: float = 0.005
    poll_s: float = 0.0002
    skew_wait_s: float = 2.0
    min_stall_s: float = 60.0
    publish_s: float = 0.5


class Instruments:
    """The plugin's metric instruments, made once per meter."""

    def __init__(self, meter: Any) -> None:
        self.duration = meter.create_histogram(names.METRIC_DURATION, unit="s",
                                               description="Collective duration, launch to completion",
                                               explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.busbw = meter.create_histogram(names.METRIC_BUSBW, unit="By/s",
                                            description="Bus bandwidth as nccl-tests computes it",
                                            explicit_bucket_boundaries_advisory=BUSBW_BUCKETS)
        self.bytes = meter.create_counter(names.METRIC_BYTES, unit="By",
                                          description="Bytes moved by collectives (nccl-tests' S)")
        self.arrival_skew = meter.create_histogram(names.METRIC_ARRIVAL_SKEW, unit="s",
                                                   description="Last arrival minus first arrival across ranks",
                                                   explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.wait = meter.create_histogram(names.METRIC_WAIT, unit="s",
                                           description="Time this rank waited for the last rank to arrive",
                                           explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.dropped = meter.create_counter(names.METRIC_DROPPED, unit="{op}",
                                            description="Collectives not recorded because the ring was full")


def reduce_op_name(aux: Any) -> str | None:
    """The reduce op's lowercase name from an options object, a ``ReduceOp`` or a ``RedOpType``."""
    op = getattr(aux, "reduceOp", aux)
    op = getattr(op, "op", op)  # a ReduceOp wraps its RedOpType
    if op is None or (isinstance(op, (int, bool)) and not hasattr(op, "name")):
        return None
    name = getattr(op, "name", None)
    if not isinstance(name, str):
        text = str(op)
        name = text.rsplit(".", 1)[-1] if "." in text else None
    return name.lower() if isinstance(name, str) and name.isupper() else None


class Processor(threading.Thread):
    """Drains the ring; see the module docstring."""

    def __init__(self, run: Run, config: ProcessorConfig, dist: Any, global_rank: int,
                 tracer: Callable[[], Any], instruments: Callable[[], Instruments],
                 exchange_factory: Callable[[Callable[[list[Any], list[Arrival]], None]], ArrivalExchange | None],
                 store: Any, store_prefix: str) -> None:
        super().__init__(name="llamatelemetry-nccl", daemon=True)
        self._run = run
        self.config = config
        self._dist = dist
        self._rank = global_rank
        self._tracer = tracer
        self._instruments = instruments
        self._store = store
        self._store_prefix = store_prefix
        self._halt = threading.Event()
        self._pending: list[PendingOp] = []
        self._interval = config.tick_s
        self._groups: dict[Any, GroupInfo] = {}
        self._modes: dict[Any, str] = {}
        self._default = dist.distributed_c10d._get_default_group()
        self._block: list[PendingOp] = []
        self._sealed: deque[list[PendingOp]] = deque()
        self._awaiting: dict[int, tuple[PendingOp, int]] = {}
        self._delivered: deque[tuple[list[PendingOp], list[Arrival]]] = deque()
        self._durations: dict[str, deque[float]] = {}
        self._p99: dict[str, float] = {}
        self._finished = 0
        self._drained = 0
        self._dropped_reported = 0
        self._progress: dict[Any, int] = {}
        self._published: dict[Any, int] = {}
        self._last_publish = 0.0
        self._hook_infos: deque[list[Any]] = deque()  # [pg, info, ticks waited]
        self._hooked: list[Any] = []
        self._force_open = False
        self._errors_logged: set[str] = set()
        self._exchange = exchange_factory(self._deliver) if config.arrival_every > 0 else None
        self.stalls: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- control
    def start(self) -> None:
        """Start the thread (and the arrival exchange's)."""
        if self._exchange is not None:
            self._exchange.start()
        super().start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Finish what can be finished, end spans of ops still open, and stop."""
        self.flush(timeout_s)
        self._halt.set()
        self._run.doorbell.put(None)
        self.join(timeout_s)
        self._count_dropped(final=True)
        if self._exchange is not None:
            self._exchange.stop()
            self._exchange.join(0.5)
        for pg in self._hooked:
            if _hook_sinks.get(pg) == self.on_nccl_completion:
                _hook_sinks[pg] = None
        self._hook_infos.clear()
        for record in self._pending:
            if record.span is not None:
                record.span.set_attribute(names.ERROR_TYPE, "stalled")
                record.span.end()
                record.span = None

    @property
    def exchange_busy(self) -> bool:
        """Whether the exchange thread is still alive (blocked in a collective, perhaps)."""
        return self._exchange is not None and self._exchange.is_alive()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every op launched so far is finalized (or ``timeout_s``); an unsealed block goes without skew."""
        deadline = time.monotonic() + timeout_s
        self._force_open = True
        try:
            while time.monotonic() < deadline:
                self._run.ring_doorbell()
                if not self._run.ring and not self._pending and not self._awaiting:
                    return True
                time.sleep(0.005)
            return False
        finally:
            self._force_open = False

    def on_nccl_completion(self, pg: Any, info: Any) -> None:
        """ProcessGroupNCCL's completion hook (its hook thread): queue the work info."""
        if not self._halt.is_set():
            self._hook_infos.append([pg, info, 0])

    def run(self) -> None:
        run = self._run
        while True:
            stopping = self._halt.is_set()
            if not stopping:
                run.sleeping = True
                if not run.ring:  # checked after raising the flag: a record appended since rings the bell
                    try:
                        run.doorbell.get(timeout=self._interval)
                    except queue.Empty:
                        pass
                run.sleeping = False
            try:
                self.tick()
            except Exception as exc:  # telemetry never breaks the job: log once per kind and go on
                key = type(exc).__name__
                if key not in self._errors_logged:
                    self._errors_logged.add(key)
                    log.warning("NCCL tracing: processing collectives failed (%s: %s); continuing.", key, exc,
                                exc_info=True)
            if stopping:
                return

    # ---------------------------------------------------------------- one pass
    def tick(self) -> None:
        """One pass over the ring, the pending ops, the exchanges and the watchdog."""
        ring = self._run.ring
        while ring:
            try:
                item = ring.popleft()
            except IndexError:
                break
            self._drained += 1
            if item is STEP_END:
                self._drained -= 1
                self._seal()
                continue
            item = self._adopt(item)
            self._pending.append(item)
            self._progress[item.pg] = item.seq
            if self._exchange is not None and item.pg is self._default:
                item.in_block = True
                self._block.append(item)
                if len(self._block) >= self.config.arrival_every:
                    self._seal()
        if self._hook_infos:
            self._match_hook_infos()
        still: list[PendingOp] = []
        interval = self.config.tick_s
        now = time.time_ns()
        for record in self._pending:
            if not record.t1 and record.mode == MODE_POLL and record.work is not None:
                self._poll(record)
            if record.t1:
                if record.work is not None:
                    self._run.waiting.pop(record.work, None)
                    record.work = None
                record.raw[WORK] = None
                self._finish(record)
                continue
            if record.mode == MODE_POLL:
                # Poll a young op often and an old one rarely: the end stays within ~5% of the duration
                # without spinning while a recv waits for seconds.
                age_s = (now - record.t0) / 1e9
                interval = min(interval, max(self.config.poll_s, age_s / 20))
            self._check_stall(record)
            still.append(record)
        self._pending = still
        self._interval = interval
        self._submit_sealed()
        while self._delivered:
            block, arrivals = self._delivered.popleft()
            self._apply_arrivals(block, arrivals)
        self._expire_awaiting()
        self._publish_progress()
        self._count_dropped()

    def _adopt(self, raw: list[Any]) -> PendingOp:
        record = PendingOp(raw)
        if len(raw) > ERROR:
            record.mode = MODE_LAUNCH
            record.error = raw[ERROR]
            return record
        mode = MODE_POLL if raw[P2P] else self.mode_of(record.pg)
        if mode == MODE_FUTURE and not raw[T_WAIT]:
            try:
                # Attached here, off the caller's thread (it costs ~2 us); an op that already completed calls
                # back at once, and wait() returning, if earlier, wins.
                record.work.get_future().add_done_callback(record.done)
            except RuntimeError:  # a Work with no future (gloo's reduce_scatter): polled, or its wait()
                mode = MODE_POLL
        record.mode = mode
        if mode == MODE_HOOK:  # wait() on NCCL returns before the GPU is done: the hook alone times it
            record.op_type = _op_type(record.work)
            self._run.waiting.pop(record.work, None)
            record.work = None
        return record

    @staticmethod
    def _backend_name(pg: Any) -> str:
        try:
            return str(pg.name()).lower()
        except Exception:
            return ""

    def prepare_groups(self, groups: list[Any]) -> None:
        """Hook the NCCL groups that exist now, before any traced op (call before patching)."""
        for pg in groups:
            if pg in self._modes or self._backend_name(pg) != "nccl":
                continue
            try:
                fresh = int(pg._get_sequence_number_for_group()) == 0
            except Exception:
                fresh = False
            # A Work made before timing was on has no CUDA events: ProcessGroupNCCL's hook thread fails on
            # it and aborts the group's communicators. So the hook goes only on a group with no op yet.
            self._modes[pg] = self._hook(pg) if fresh or pg in _hook_sinks or _timing_from_env() else MODE_POLL

    def _hook(self, pg: Any) -> str:
        try:
            if pg not in _hook_sinks:
                pg._enable_collectives_timing()
                pg._register_on_completion_hook(lambda info: _route(pg, info))
            _hook_sinks[pg] = self.on_nccl_completion
            self._hooked.append(pg)
            return MODE_HOOK
        except Exception as exc:
            log.info("NCCL completion hook unavailable (%s); timing NCCL ops by polling is_completed().", exc)
            return MODE_POLL

    def mode_of(self, pg: Any) -> str:
        """How ``pg``'s ops are timed (decided once per group; an NCCL group gets the completion hook only if safe)."""
        mode = self._modes.get(pg)
        if mode is not None:
            return mode
        backend = self._backend_name(pg)
        mode = MODE_POLL
        if backend == "gloo":
            mode = MODE_FUTURE
        elif backend == "nccl":
            # Seen first here, its first op is already launched (without CUDA events unless the variable
            # asked for them at the group's creation): polled, unless hooking it is safe.
            if pg in _hook_sinks or _timing_from_env():
                mode = self._hook(pg)
            else:
                log.info("NCCL group %r was first used before instrument(): its ops are timed by polling "
                         "is_completed() (set %s=1 to time every group on the GPU).",
                         getattr(pg, "group_name", ""), ENV_NCCL_TIMING)
        self._modes[pg] = mode
        return mode

    def _poll(self, record: PendingOp) -> None:
        work = record.work
        try:
            if work.is_completed():
                record.t_done = time.time_ns()
                return
        except Exception as exc:
            record.t_done = time.time_ns()
            record.error = error_type(exc)
            return
        # Only our two references left (the record's and the waiting map's): the application dropped a Work
        # that reports no completion (gloo's reduce_scatter) without waiting; all we know is its launch.
        if sys.getrefcount(work) <= 3:
            record.mode = MODE_LAUNCH
            record.t_done = record.t0

    def _seal(self) -> None:
        if self._block:
            self._sealed.append(self._block)
            self._block = []

    def _submit_sealed(self) -> None:
        while self._sealed and self._exchange is not None:
            block = self._sealed[0]
            if not all(r.t1 for r in block):
                return
            self._sealed.popleft()
            if self._exchange.failed:
                continue
            self._exchange.submit(block)

    def _deliver(self, block: list[Any], arrivals: list[Arrival]) -> None:
        # Called on the exchange thread; the processor applies it on its own.
        self._delivered.append((block, arrivals))
        self._run.ring_doorbell()

    def _match_hook_infos(self) -> None:
        # NCCL completes a group's works in launch order: an info belongs to the oldest open record of its group
        # and op type. One with no such record waits a few ticks (its record may still be in the ring), then
        # is dropped: an op launched from C++ (functional collectives), a polled send/recv, or one from before.
        kept: list[list[Any]] = []
        for _ in range(len(self._hook_infos)):  # the hook thread may append meanwhile
            item = self._hook_infos.popleft()
            pg, info, waited = item
            op_type = getattr(info, "op_type", None)
            record = next((r for r in self._pending if r.pg is pg and r.mode == MODE_HOOK and not r.t_done
                           and (r.op_type is None or op_type is None or r.op_type == op_type)), None)
            if record is None:
                if waited < HOOK_INFO_PATIENCE:
                    item[2] = waited + 1
                    kept.append(item)
                continue
            duration: Any = getattr(info, "active_duration", None)
            seconds = duration.total_seconds() if hasattr(duration, "total_seconds") else None
            finished: Any = getattr(info, "time_finished", None)
            end = int(finished.timestamp() * 1e9) if hasattr(finished, "timestamp") else time.time_ns()
            if seconds is not None and seconds > 0:
                record.gpu_s = seconds
            record.t_done = max(end, record.t0 + 1)
        self._hook_infos.extendleft(reversed(kept))

    # ---------------------------------------------------------------- finishing
    def group(self, pg: Any) -> GroupInfo:
        """The (cached) description of a process group."""
        info = self._groups.get(pg)
        if info is None:
            dist = self._dist
            try:
                backend = str(dist.get_backend(pg))
            except Exception:
                backend = str(pg.name())
            try:
                ranks = tuple(int(r) for r in dist.get_process_group_ranks(pg))
            except Exception:
                ranks = tuple(range(pg.size()))
            info = GroupInfo(name=str(getattr(pg, "group_name", "") or ""),
                             desc=str(getattr(pg, "group_desc", "") or ""),
                             size=int(pg.size()), rank=int(pg.rank()), backend=backend, ranks=ranks,
                             is_default=pg is self._default)
            self._groups[pg] = info
        return info

    def _source(self, record: PendingOp) -> str:
        if record.mode == MODE_LAUNCH:
            return names.SOURCE_LAUNCH
        if record.gpu_s is not None:
            return names.SOURCE_GPU
        if record.waited:
            return names.SOURCE_WAIT
        return names.SOURCE_COMPLETION

    def _seconds(self, record: PendingOp) -> float:
        if record.gpu_s is not None:
            return record.gpu_s
        return max(record.t1 - record.t0, 0) / 1e9

    def _finish(self, record: PendingOp) -> None:
        info = self.group(record.pg)
        seconds = self._seconds(record)
        nbytes = collective_bytes(record.op, record.count * record.esize, info.size)
        metric_attributes = {names.OP: record.op, names.GROUP_NAME: info.name, names.BACKEND: info.backend,
                             names.SIZE_BUCKET: size_bucket(nbytes)}
        instruments = self._instruments()
        instruments.duration.record(seconds, metric_attributes)
        if nbytes:
            instruments.bytes.add(nbytes, metric_attributes)
        bw = bandwidths(record.op, nbytes, info.size, seconds)
        if bw is not None and record.error is None:
            instruments.busbw.record(bw[1], metric_attributes)
        if record.error is None:
            self._track(record.op, seconds)
        if record.in_block and not self._exchange_dead():
            self._awaiting[id(record)] = (record, time.monotonic_ns())
        else:
            self._finalize(record)

    def _exchange_dead(self) -> bool:
        return self._exchange is None or self._exchange.failed

    def _track(self, op: str, seconds: float) -> None:
        window = self._durations.get(op)
        if window is None:
            window = self._durations[op] = deque(maxlen=512)
        window.append(seconds)
        self._finished += 1
        if self._finished % 64 == 1 or op not in self._p99:
            ordered = sorted(window)
            self._p99[op] = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def _apply_arrivals(self, block: list[PendingOp], arrivals: list[Arrival]) -> None:
        instruments = self._instruments()
        for record, arrival in zip(block, arrivals, strict=False):
            record.arrival = arrival
            info = self.group(record.pg)
            nbytes = collective_bytes(record.op, record.count * record.esize, info.size)
            attributes = {names.OP: record.op, names.GROUP_NAME: info.name, names.BACKEND: info.backend,
                          names.SIZE_BUCKET: size_bucket(nbytes)}
            instruments.arrival_skew.record(arrival.skew_s, attributes)
            instruments.wait.record(arrival.wait_s, attributes)
        for record in block:
            if self._awaiting.pop(id(record), None) is not None:
                self._finalize(record)

    def _expire_awaiting(self) -> None:
        if not self._awaiting:
            return
        now = time.monotonic_ns()
        limit = int(self.config.skew_wait_s * 1e9)
        open_ids = {id(r) for r in self._block} if self._force_open else set()
        dead = self._exchange_dead()
        for key, (record, since) in list(self._awaiting.items()):
            if dead or now - since > limit or key in open_ids:
                del self._awaiting[key]
                self._finalize(record)

    def _wants_span(self, record: PendingOp, seconds: float) -> bool:
        mode = self.config.spans
        if mode == "off":
            return False
        if mode == "all" or record.stalled or record.span is not None:
            return True
        step = record.step
        return bool(step is not None and step.sampled) or seconds >= self.config.slow_op_s

    def _finalize(self, record: PendingOp) -> None:
        if record.finalized:
            return
        record.finalized = True
        seconds = self._seconds(record)
        if not self._wants_span(record, seconds):
            return
        attributes = self.attributes(record, seconds)
        span = record.span
        if span is None:
            span = self._tracer().start_span(record.op, context=self._parent(record), attributes=attributes,
                                             start_time=record.t0)
        else:
            span.set_attributes(attributes)
        if record.error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, record.error))
        span.end(end_time=max(record.t1, record.t0))
        record.span = None

    def _parent(self, record: PendingOp) -> Any:
        from opentelemetry import trace

        step = record.step
        if step is not None and step.span_context is not None:
            return trace.set_span_in_context(trace.NonRecordingSpan(step.span_context))
        if record.context is not None:
            return record.context
        from opentelemetry.context import Context

        return Context()

    def attributes(self, record: PendingOp, seconds: float) -> dict[str, Any]:
        """The span attributes of a finished op."""
        info = self.group(record.pg)
        nbytes = collective_bytes(record.op, record.count * record.esize, info.size)
        attributes: dict[str, Any] = {
            names.OP: record.op, names.BYTES: nbytes, names.COUNT: record.count,
            names.GROUP_NAME: info.name, names.GROUP_DESC: info.desc, names.GROUP_SIZE: info.size,
            names.GROUP_RANK: info.rank, names.RANK: self._rank, names.BACKEND: info.backend,
            names.SEQ: record.seq, names.DURATION: seconds, names.DURATION_SOURCE: self._source(record),
        }
        if record.dtype is not None:
            attributes[names.DTYPE] = str(record.dtype).removeprefix("torch.")
        reduce_op = reduce_op_name(record.aux) if record.op in ("all_reduce", "reduce", "reduce_scatter") else None
        if reduce_op:
            attributes[names.REDUCE_OP] = reduce_op
        if record.op in ("send", "recv") and isinstance(record.aux, int):
            attributes[names.PEER] = record.aux
        if record.async_op is not None:
            attributes[names.ASYNC] = record.async_op
        if record.step is not None:
            attributes[names.STEP] = record.step.number
        bw = bandwidths(record.op, nbytes, info.size, seconds) if record.error is None else None
        if bw is not None:
            attributes[names.ALGBW], attributes[names.BUSBW], attributes[names.BUS_FACTOR] = bw
        if record.arrival is not None:
            attributes[names.ARRIVAL_SKEW] = record.arrival.skew_s
            attributes[names.LAST_ARRIVAL_RANK] = record.arrival.last_rank
            attributes[names.SKEW_SOURCE] = record.arrival.source
        if record.site is not None:
            attributes[names.CODE_FUNCTION], attributes[names.CODE_FILE], attributes[names.CODE_LINE] = record.site
        if record.error is not None:
            attributes[names.ERROR_TYPE] = record.error
        return attributes

    # ---------------------------------------------------------------- watchdog
    def stall_threshold(self, op: str) -> float:
        """Seconds an op may stay open: ``stall_timeout_s``, else max(60 s, 10 x its p99)."""
        if self.config.stall_timeout_s is not None:
            return self.config.stall_timeout_s
        return max(self.config.min_stall_s, 10.0 * self._p99.get(op, 0.0))

    def _check_stall(self, record: PendingOp) -> None:
        if record.stalled:
            return
        age = (time.time_ns() - record.t0) / 1e9
        if age < self.stall_threshold(record.op):
            return
        record.stalled = True
        info = self.group(record.pg)
        frame = sys._current_frames().get(record.thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(thread gone)"
        missing = self.missing_ranks(record, info)
        missing_text = ",".join(map(str, missing)) if missing is not None else "unknown"
        self.stalls.append({"op": record.op, "seq": record.seq, "group": info.name, "age_s": age,
                            "missing_ranks": missing, "stack": stack})
        log.warning("Collective stalled: op=%s seq=%d group=%s (%s) age=%.1fs ranks that never arrived=%s; "
                    "blocked stack:\n%s", record.op, record.seq, info.name, info.desc, age, missing_text, stack)
        if self.config.spans == "off":
            return
        attributes = {names.STALL_AGE: age, names.STALL_STACK: stack, names.OP: record.op, names.SEQ: record.seq}
        if missing is not None:
            attributes[names.STALL_MISSING_RANKS] = missing
        span = self._tracer().start_span(record.op, context=self._parent(record), start_time=record.t0)
        span.add_event(names.STALLED_EVENT, attributes)
        record.span = span

    def _key(self, info: GroupInfo, rank: int) -> str:
        return f"{self._store_prefix}/{info.name}/{rank}"

    def missing_ranks(self, record: PendingOp, info: GroupInfo) -> list[int] | None:
        """Global ranks of the group whose published progress has not reached this op (``None`` without a store)."""
        store = self._store
        if store is None:
            return None
        missing: list[int] = []
        try:
            for rank in info.ranks:
                if rank == self._rank:
                    continue
                key = self._key(info, rank)
                if not store.check([key]) or int(store.get(key)) < record.seq:
                    missing.append(rank)
        except Exception as exc:
            log.info("NCCL watchdog: could not read progress from the store (%s)", exc)
            return None
        return missing

    def _publish_progress(self) -> None:
        if self._store is None:
            return
        # At most twice a second: every rank writes to one store server, and thresholds are seconds long.
        now = time.monotonic()
        if now - self._last_publish < self.config.publish_s:
            return
        self._last_publish = now
        for pg, seq in self._progress.items():
            if self._published.get(pg) == seq:
                continue
            try:
                self._store.set(self._key(self.group(pg), self._rank), str(seq))
            except Exception as exc:
                log.info("NCCL watchdog: could not publish progress to the store (%s)", exc)
                self._store = None
                return
            self._published[pg] = seq

    def _count_dropped(self, final: bool = False) -> None:
        lost = self._run.issued - self._drained - len(self._run.ring)
        # While ops run, one may be counted as issued and not yet appended: wait for a second one.
        if lost > self._dropped_reported + (0 if final else 1):
            if not self._dropped_reported:
                log.warning("NCCL tracing: the ring of %d records was full, some collectives were not recorded "
                            "(llamatelemetry.collective.dropped counts them); raise ring_size.", self._run.ring.maxlen)
            self._instruments().dropped.add(lost - self._dropped_reported)
            self._dropped_reported = lost
