"""``TorchDistributedInstrumentor``: traces every torch.distributed collective and point-to-point op.

It patches the single choke point, the ``ProcessGroup`` methods (the ``dist.*`` functions call each
other, FSDP2 and DDP comm hooks call the methods directly), saving each original from
``ProcessGroup.__dict__`` so that ``uninstrument()`` puts back the very same objects.

Example::

    import torch.distributed as dist
    from llamatelemetry.nccl import TorchDistributedInstrumentor

    dist.init_process_group("nccl")
    instrumentor = TorchDistributedInstrumentor()      # spans="sampled" by default
    instrumentor.instrument()
    for step, batch in enumerate(loader):
        with instrumentor.step(step):                  # one trace per step across ranks
            train_step(batch)
    instrumentor.uninstrument()
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llamatelemetry.decorators import error_type
from llamatelemetry_nccl import __version__
from llamatelemetry_nccl import semconv as names
from llamatelemetry_nccl.errors import SpansModeError
from llamatelemetry_nccl.hotpath import (
    METHODS,
    STEP_END,
    Active,
    Run,
    make_wait_wrapper,
    make_wrapper,
)
from llamatelemetry_nccl.processor import Instruments, Processor, ProcessorConfig
from llamatelemetry_nccl.steps import StepContext, step_root_span_id, step_trace_id
from llamatelemetry_nccl.stragglers import ArrivalExchange, host_key

__all__ = ["TorchDistributedInstrumentor", "ENV_SPANS", "ENV_RUN_ID", "SPANS_MODES", "active_instrumentor"]

log = logging.getLogger("llamatelemetry.nccl")

#: Environment variable: the spans mode when the argument is not given (``sampled``, ``all``, ``off``).
ENV_SPANS = "LLAMATELEMETRY_NCCL_SPANS"
#: Environment variable: the run id that names a job's traces (after the argument, before ``TORCHELASTIC_RUN_ID``).
ENV_RUN_ID = "LLAMATELEMETRY_NCCL_RUN_ID"
SPANS_MODES = ("sampled", "all", "off")
INSTRUMENTATION_NAME = "llamatelemetry.nccl"
RUN_ID_KEY = "llamatelemetry/nccl/run_id"
PROGRESS_PREFIX = "llamatelemetry/nccl/progress"

_said: set[str] = set()
_owner: list[TorchDistributedInstrumentor] = []
# instrument() calls so far in this process: every rank counts the same, so store keys of one
# instrumentation never meet those of an earlier one.
_instrumentations = [0]


def _say_once(message: str, level: int = logging.INFO) -> None:
    if message not in _said:
        _said.add(message)
        log.log(level, message)


def active_instrumentor() -> TorchDistributedInstrumentor | None:
    """The instrumentor whose patches are in place, if any."""
    return _owner[0] if _owner and _owner[0].is_instrumented else None


def resolve_spans_mode(spans: str | None) -> str:
    """The spans mode: the argument, else ``LLAMATELEMETRY_NCCL_SPANS``, else ``sampled``."""
    if spans is not None:
        origin, value = "spans", spans
    else:
        origin, value = ENV_SPANS, os.environ.get(ENV_SPANS, "").strip() or "sampled"
    mode = value.strip().lower()
    if mode not in SPANS_MODES:
        raise SpansModeError(value, origin)
    return mode


def _import_dist() -> Any | None:
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist


class TorchDistributedInstrumentor:
    """Traces torch.distributed collectives: metrics for every op, spans per ``spans`` mode, stragglers, hangs.

    - ``spans``: ``"sampled"`` (default; ops inside sampled steps, ops slower than ``slow_op_s``, stalled
      ops), ``"all"`` or ``"off"``; ``LLAMATELEMETRY_NCCL_SPANS`` when not given.
    - ``run_id``: names the job in step trace ids (default: ``LLAMATELEMETRY_NCCL_RUN_ID``,
      ``TORCHELASTIC_RUN_ID``, else one rank 0 draws and shares through the store at ``instrument()``).
    - ``stall_timeout_s``: the watchdog's threshold (default max(60 s, 10 x the op's p99)).
    - ``step_sample_every``: in ``sampled`` mode, steps whose number is a multiple get op spans.
    - ``arrival_every``: exchange arrival times every K default-group ops (0: no straggler detection).
    - ``trust_clocks``: compare wall clocks across ranks (default: only when all ranks share a host).

    Call ``instrument()`` on every rank, after ``init_process_group()``.
    """

    def __init__(self, spans: str | None = None, *, run_id: str | None = None, stall_timeout_s: float | None = None,
                 slow_op_s: float = 1.0, step_sample_every: int = 10, arrival_every: int = 64,
                 trust_clocks: bool | None = None, ring_size: int = 65536, tick_s: float = 0.005,
                 exchange_timeout_s: float = 300.0) -> None:
        self.spans = resolve_spans_mode(spans)
        self._run_id_arg = run_id
        self.run_id: str | None = None
        self.config = ProcessorConfig(spans=self.spans, slow_op_s=slow_op_s, stall_timeout_s=stall_timeout_s,
                                      arrival_every=max(int(arrival_every), 0), tick_s=tick_s)
        self.step_sample_every = max(int(step_sample_every), 1)
        self.trust_clocks = trust_clocks
        self.ring_size = ring_size
        self.exchange_timeout_s = exchange_timeout_s
        self._run: Run | None = None
        self._processor: Processor | None = None
        self._originals: dict[str, Any] = {}
        self._wait_original: Any = None
        self._side_group: Any = None
        self._deferred: tuple[Any, str, Any] | None = None
        self._rank = 0
        self._instance = 0

    # ---------------------------------------------------------------- lifecycle
    @property
    def is_instrumented(self) -> bool:
        """Whether this instrumentor's patches are in place."""
        return self._run is not None

    @property
    def processor(self) -> Processor | None:
        """The background processor (for flushing and inspecting stalls)."""
        return self._processor

    def instrument(self) -> bool:
        """Patch the ``ProcessGroup`` methods; a no-op (said once) without torch or a process group. Idempotent."""
        if self._run is not None:
            return True
        other = active_instrumentor()
        if other is not None:
            _say_once("torch.distributed is already instrumented by another TorchDistributedInstrumentor; "
                      "this one does nothing (uninstrument the other first).", logging.WARNING)
            return False
        dist = _import_dist()
        if dist is None:
            _say_once("NCCL tracing is off: torch is not installed (pip install \"llamatelemetry-nccl[engine]\").")
            return False
        if not dist.is_available() or not dist.is_initialized():
            _say_once("NCCL tracing waits for a process group: call instrument() after "
                      "torch.distributed.init_process_group() (init(enable_nccl=True) does it for you).")
            return False
        import torch

        self._rank = dist.get_rank()
        store = _default_store(dist)
        _instrumentations[0] += 1
        self._instance = _instrumentations[0]
        self.run_id = self._resolve_run_id(store, dist)
        world = dist.get_world_size()
        if self.config.arrival_every > 0 and world > 1:
            self._side_group = dist.new_group(backend="gloo",
                                              timeout=datetime.timedelta(seconds=self.exchange_timeout_s))
        run = Run(self.ring_size, torch.Tensor, self.spans == "all", _c10d_files(dist), _current_context)
        run.side_group = self._side_group
        self._run = run
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        side = self._side_group
        trust = self.trust_clocks

        def exchange(deliver: Any) -> ArrivalExchange | None:
            if side is None:
                return None
            return ArrivalExchange(side, self.config.arrival_every, self._rank, host_key(socket.gethostname()),
                                   trust, deliver, lambda out, mine, group: gather(out, mine, group=group), torch)

        self._processor = Processor(run, self.config if side is not None else _without_exchange(self.config), dist,
                                    self._rank, _tracer, _instruments, exchange, store,
                                    f"{PROGRESS_PREFIX}/{self._instance}")
        # NCCL groups get their completion hook now, before a traced op can make a Work without CUDA events.
        self._processor.prepare_groups(_groups(dist))
        self._processor.start()
        group_class = dist.ProcessGroup
        for name, (op, arg_index, aux_index, p2p) in METHODS.items():
            original = group_class.__dict__.get(name)
            if original is None:
                continue
            self._originals[name] = original
            setattr(group_class, name, make_wrapper(original, op, arg_index, aux_index, p2p))
        work_class = dist.distributed_c10d.Work
        self._wait_original = work_class.__dict__["wait"]
        work_class.wait = make_wait_wrapper(self._wait_original)
        Active.run = run
        _owner[:] = [self]
        # Registered after init(), so it runs before telemetry's own exit flush: pending ops become spans first.
        atexit.register(self._at_exit)
        return True

    def _at_exit(self) -> None:
        self.uninstrument(timeout_s=1.0)

    def instrument_when_ready(self) -> bool:
        """Instrument now if a process group exists, else right after ``init_process_group()`` returns."""
        if self.instrument():
            return True
        dist = _import_dist()
        if dist is None or self._deferred is not None or dist.is_initialized():
            return False
        original = dist.__dict__["init_process_group"]
        instrumentor = self

        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            instrumentor._restore_deferred()
            instrumentor.instrument()
            return result

        init_process_group.__wrapped__ = original  # type: ignore[attr-defined]
        init_process_group.__doc__ = original.__doc__
        dist.init_process_group = init_process_group
        self._deferred = (dist, "init_process_group", original)
        return False

    def _restore_deferred(self) -> None:
        if self._deferred is not None:
            module, name, original = self._deferred
            setattr(module, name, original)
            self._deferred = None

    def uninstrument(self, timeout_s: float = 2.0) -> None:
        """Put back every original method (the same objects); finish pending records. Idempotent."""
        self._restore_deferred()
        run = self._run
        if run is None:
            return
        atexit.unregister(self._at_exit)
        dist = _import_dist()
        Active.run = None
        if dist is not None:
            for name, original in self._originals.items():
                setattr(dist.ProcessGroup, name, original)
            if self._wait_original is not None:
                dist.distributed_c10d.Work.wait = self._wait_original
                self._wait_original = None
        self._originals.clear()
        processor = self._processor
        if processor is not None:
            processor.stop(timeout_s)
        if self._side_group is not None and dist is not None and processor is not None and not processor.exchange_busy:
            try:
                if dist.is_initialized():
                    dist.destroy_process_group(self._side_group)
            except Exception as exc:
                log.info("NCCL tracing: could not destroy its arrival-exchange group (%s)", exc)
        self._side_group = None
        self._run = None
        self._processor = None
        if _owner and _owner[0] is self:
            _owner.clear()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the ops launched so far are recorded (metrics, spans); ``True`` when all were."""
        return self._processor.flush(timeout_s) if self._processor is not None else True

    # ---------------------------------------------------------------- steps
    @contextmanager
    def step(self, number: int) -> Iterator[StepContext]:
        """A training step: every rank's collective spans inside share one trace, under this rank's step span."""
        run = self._run
        if run is None:
            yield StepContext(number=number, sampled=False)
            return
        sampled = self.spans == "all" or (self.spans == "sampled" and number % self.step_sample_every == 0)
        span: Any = None
        token: Any = None
        if self.spans != "off":
            from opentelemetry import context as otel_context
            from opentelemetry import trace

            parent = trace.SpanContext(trace_id=step_trace_id(self.run_id or "", number),
                                       span_id=step_root_span_id(self.run_id or "", number), is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
            span = _tracer().start_span(
                names.STEP_SPAN, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                attributes={names.STEP: number, names.RUN_ID: self.run_id or "", names.RANK: self._rank})
            token = otel_context.attach(trace.set_span_in_context(span))
        step = StepContext(number=number, sampled=sampled, span_context=span.get_span_context() if span else None)
        previous, previous_capture = run.step, run.capture
        run.step = step
        run.capture = run.capture_all or sampled
        try:
            yield step
        except BaseException as exc:
            if span is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute(names.ERROR_TYPE, error_type(exc))
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            run.step, run.capture = previous, previous_capture
            run.ring.append(STEP_END)
            if token is not None:
                from opentelemetry import context as otel_context

                otel_context.detach(token)
            if span is not None:
                span.end()

    # ---------------------------------------------------------------- helpers
    def _resolve_run_id(self, store: Any, dist: Any) -> str:
        explicit = self._run_id_arg or os.environ.get(ENV_RUN_ID) or os.environ.get("TORCHELASTIC_RUN_ID")
        if explicit and explicit != "none":
            return explicit
        if store is None or dist.get_world_size() == 1:
            return uuid.uuid4().hex
        # One look-up at instrument() time, so that every rank derives the same step trace ids.
        key = f"{RUN_ID_KEY}/{self._instance}"
        if self._rank == 0:
            store.set(key, uuid.uuid4().hex)
        return bytes(store.get(key)).decode()


def _without_exchange(config: ProcessorConfig) -> ProcessorConfig:
    import attrs

    return attrs.evolve(config, arrival_every=0)


def _default_store(dist: Any) -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _groups(dist: Any) -> list[Any]:
    try:
        return list(dist.distributed_c10d._world.pg_map)
    except Exception:
        return [dist.distributed_c10d._get_default_group()]


def _c10d_files(dist: Any) -> tuple[str, ...]:
    import torch.distributed.c10d_logger as c10d_logger

    return tuple(module.__file__ for module in (dist.distributed_c10d, c10d_logger) if module.__file__)


def _current_context() -> Any:
    from opentelemetry import context

    return context.get_current()


def _tracer() -> Any:
    from llamatelemetry.otel import get_tracer

    return get_tracer(INSTRUMENTATION_NAME, __version__)


def _instruments() -> Instruments:
    from llamatelemetry.otel import cached_instruments

    return cached_instruments("llamatelemetry_nccl", Instruments)


def instrument_torch_distributed(target: Any = None, **options: Any) -> Any:
    """The ``torch_distributed`` instrumentor of ``llamatelemetry.sdk.instrument``: instrument (now or when ready)."""
    instrumentor = active_instrumentor() or TorchDistributedInstrumentor(**options)
    instrumentor.instrument_when_ready()
    _owner[:] = [instrumentor]
    return target


def uninstrument_torch_distributed(target: Any = None) -> None:
    """Undo ``instrument_torch_distributed``."""
    if _owner:
        _owner[0].uninstrument()
