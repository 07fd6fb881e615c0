"""Load drivers: how the benchmark sends its requests to one kind of server, and the engine-based fallback.

The core's harness owns everything that is the same for every server: the prompt plan, warm-up,
closed and open loops, spans, progress, per-request records, statistics and the report. A
*load driver* owns the rest: connecting (or starting a server), sending one request and timing
its output chunks, and reading the server's own figures around a test. Plugins register drivers
with the ``llamatelemetry_register_load_drivers`` hook (a ``LoadDriverSpec`` whose ``factory`` is
a ``LoadDriverFactory``); a backend with no driver of its own is benchmarked by
``EngineLoadDriver``, through ``create_engine``, one engine per concurrent stream.

Example (a driver for a server that answers in one piece)::

    class MyDriver:
        def __init__(self, context: DriverContext) -> None: ...
        async def start(self, max_in_flight: int | None) -> int: ...   # connect; return how many at once
        async def send(self, request: LoadRequest) -> RequestOutcome:
            sent = time.perf_counter()
            body = await self.http.post("/generate", json={"prompt": request.prompt.text})
            return RequestOutcome(sent=sent, ended=time.perf_counter(), output_tokens=body.json()["tokens"])
        async def test_started(self) -> None: ...
        async def test_finished(self) -> ServerFigures | None: return None
        def describe(self) -> DriverDescription: return DriverDescription(model_name="my-model")
        async def close(self) -> None: ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from llamatelemetry.bench.config import BenchmarkConfig
from llamatelemetry.bench.prompts import Prompt
from llamatelemetry.bench.records import ServerFigures
from llamatelemetry.errors import LlamaTelemetryError

if TYPE_CHECKING:
    from llamatelemetry.inference.engine import InferenceEngine
    from llamatelemetry.plugins.records import LoadDriverSpec

__all__ = [
    "DriverArguments",
    "DriverContext",
    "DriverDescription",
    "DoctorCheck",
    "EngineLoadDriver",
    "LoadDriver",
    "LoadDriverError",
    "LoadDriverFactory",
    "LoadRequest",
    "RequestOutcome",
    "find_load_driver",
    "DEFAULT_ENGINE_STREAMS",
]

log = logging.getLogger("llamatelemetry.bench")

#: Engines the fallback driver opens for an open-loop test that set no ``max_concurrency``.
DEFAULT_ENGINE_STREAMS = 4


class LoadDriverError(LlamaTelemetryError, RuntimeError):
    """A load driver could not be loaded, or cannot serve the load asked of it."""


# ============================================================================ records


@attrs.frozen
class LoadRequest:
    """One request the harness asks a driver to send.

    ``slot`` is unique among the requests in flight at the same moment and below the number the
    driver said it serves at once (``start``'s return value): a driver with one connection, client
    or engine per stream picks it with ``slot``.
    """

    index: int
    prompt: Prompt
    max_tokens: int
    #: ``config.seed + index``: the same request gets the same seed in every run.
    seed: int
    slot: int
    warmup: bool = False


def _stamps(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(values)


def _optional_ints(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


@attrs.frozen
class RequestOutcome:
    """What a driver measured for one request; the harness turns it into a ``RequestRecord``.

    Times are ``time.perf_counter()`` readings taken by the driver: ``sent`` just before the
    request left, ``ended`` when its response ended (or failed), and ``chunk_times`` when each
    chunk that carried output arrived (empty without a stream). ``ttft_ms`` is for a driver that
    has no chunk times but knows the time to first token (an in-process backend's own figure);
    otherwise the harness takes it from the first chunk. A figure the driver cannot know is
    ``None``. A failed request has ``error`` set (the harness also catches what ``send`` raises).

    Example::

        RequestOutcome(sent=t0, ended=t1, chunk_times=stamps, output_tokens=usage.completion_tokens)
    """

    sent: float
    ended: float
    chunk_times: tuple[float, ...] = attrs.field(default=(), converter=_stamps)
    ttft_ms: float | None = None
    #: Tokens each output chunk carried (same length as ``chunk_times``), where the server says.
    tokens_per_chunk: tuple[int, ...] | None = attrs.field(default=None, converter=_optional_ints)
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    server_prompt_ms: float | None = None
    server_predicted_ms: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    finish_reason: str | None = None
    error: BaseException | None = None


@attrs.frozen
class DriverContext:
    """What a driver factory is given: the run's settings and the driver's own options.

    ``options`` are the driver's options: the values of the command-line arguments the driver
    added (``--url``, ``--tiny``, ...), or ``BenchmarkRunner(driver_options=...)`` from Python.
    ``notice`` prints a one-line message for the user (``starting a server ...``).
    """

    backend: str
    config: BenchmarkConfig
    options: Mapping[str, Any] = attrs.field(factory=dict)
    notice: Callable[[str], None] = attrs.field(default=log.info, eq=False, repr=False)


@attrs.frozen
class DriverDescription:
    """What a driver knows about what it benchmarked, for the report's environment fingerprint.

    ``model_path`` is a local file the harness fingerprints (size, sha256); ``server`` is the
    server's build and settings as JSON values (shown in the report as they are), with
    ``summary`` a short line for the results table (``build b5432, 4 slots``).
    """

    model_name: str | None = None
    model_path: str | None = None
    server: Mapping[str, Any] | None = None
    summary: str | None = None


@attrs.frozen
class DoctorCheck:
    """One line a driver factory adds to ``llamatelemetry doctor`` (and one key to ``doctor --json``).

    Example::

        DoctorCheck(key="llama_cpp_server_kinds", label="llama.cpp servers", value=["xllamacpp"],
                    text="xllamacpp")
    """

    key: str
    label: str
    value: Any
    text: str


# ============================================================================ contracts


@runtime_checkable
class LoadDriver(Protocol):
    """Sends a benchmark's requests to one server; the harness calls these methods in this order.

    ``start`` once (connect; a driver may start its own server here), then per test
    ``test_started`` (after warm-up), ``send`` for every request (``slot`` below what ``start``
    returned), ``test_finished``; then ``describe`` and ``close`` once (``close`` also after a
    failed ``start``). Every method runs on the harness's event loop: ``send`` must not block it
    (await network I/O, or run blocking work in a thread), and it is called concurrently.
    """

    async def start(self, max_in_flight: int | None) -> int:
        """Get ready for up to ``max_in_flight`` requests at once (``None``: no cap); return how many it serves."""
        ...

    async def send(self, request: LoadRequest) -> RequestOutcome:
        """Send one request and time it."""
        ...

    async def test_started(self) -> None:
        """A test's measured requests start now (warm-up is over): take the server's counters."""
        ...

    async def test_finished(self) -> ServerFigures | None:
        """The test's requests ended: what the server's own figures moved by (``None``: nothing to say)."""
        ...

    def describe(self) -> DriverDescription:
        """The model and server benchmarked (called after the tests, before ``close``)."""
        ...

    async def close(self) -> None:
        """Close connections and stop anything ``start`` started."""
        ...


class DriverArguments:
    """The command-line arguments a driver adds to ``llamatelemetry bench`` (an argparse group that keeps their names).

    Their values reach the driver as ``DriverContext.options``, keyed by ``dest``.
    """

    def __init__(self, container: Any, actions: list[argparse.Action] | None = None) -> None:
        self._container = container
        #: Every argument added, in order (groups included).
        self.actions: list[argparse.Action] = actions if actions is not None else []

    def add_argument(self, *names: str, **options: Any) -> argparse.Action:
        """``argparse``'s ``add_argument``."""
        action: argparse.Action = self._container.add_argument(*names, **options)
        self.actions.append(action)
        return action

    def add_mutually_exclusive_group(self) -> DriverArguments:
        """Arguments of which a user may give only one."""
        return DriverArguments(self._container.add_mutually_exclusive_group(), self.actions)


class LoadDriverFactory:
    """What a ``LoadDriverSpec.factory`` refers to: creates the driver, and may add CLI arguments and doctor checks.

    Any callable ``factory(context) -> LoadDriver | None`` will do; subclass this to get the
    optional methods' defaults. Returning ``None`` hands the run to ``EngineLoadDriver`` (a
    llama.cpp run with only a local model file, for instance, runs in-process).

    Example::

        class MyFactory(LoadDriverFactory):
            def __call__(self, context):
                return MyDriver(context)

            def add_arguments(self, arguments):
                arguments.add_argument("--my-url", help="the server to load")

        FACTORY = MyFactory()   # LoadDriverSpec(factory="my_plugin.bench:FACTORY", ...)
    """

    def __call__(self, context: DriverContext) -> LoadDriver | None:
        """The driver for this run, or ``None`` to use the engine-based driver."""
        raise NotImplementedError

    def add_arguments(self, arguments: DriverArguments) -> None:
        """Add the driver's own options to ``llamatelemetry bench`` (none by default)."""

    def doctor(self) -> Iterable[DoctorCheck]:
        """Checks shown by ``llamatelemetry doctor`` (none by default); must be quick and never raise."""
        return ()


def find_load_driver(backend: str) -> LoadDriverSpec | None:
    """The registered driver serving ``backend`` (by its name or any alias, case-insensitive), or ``None``."""
    from llamatelemetry.plugins import get_plugin_manager

    pm = get_plugin_manager()
    asked = backend.strip().lower()
    wanted = {asked}
    registry = pm.backends()
    spec = registry.get(asked) or registry.get(asked.replace("_", "-"))
    if spec is not None:
        wanted |= {spec.name.lower(), *(alias.lower() for alias in spec.aliases)}
    for driver in sorted(set(pm.load_drivers().values()), key=lambda d: d.name):
        if wanted & {name.lower() for name in driver.backends}:
            return driver
    return None


def load_factory(spec: LoadDriverSpec) -> Any:
    """Import a driver spec's factory; a failure is a ``LoadDriverError`` naming the driver and its distribution."""
    try:
        return spec.load()
    except Exception as exc:
        raise LoadDriverError(f"Load driver {spec.name!r} from {spec.distribution or 'an unknown distribution'} "
                              f"could not be imported ({type(exc).__name__}: {exc}); reinstall that distribution or "
                              "block it with LLAMATELEMETRY_DISABLE_PLUGINS.") from exc


# ============================================================================ the engine-based fallback


class EngineLoadDriver:
    """Benchmarks any registered backend through ``create_engine``: one engine per concurrent stream.

    An engine serves one request at a time (an in-process model is not safe to call from two
    threads; a client backend may not be either), so the driver opens as many engines as the
    run's largest concurrency and runs each request on its stream's engine in a thread of its
    own. Each request is the engine's GenAI span under the harness's request span. The figures
    come from the backend's ``InferenceResult`` (its own time to first token, prefill and decode
    speeds); without a stream there are no gaps between chunks.

    Example::

        EngineLoadDriver(context, options={"model_path": "model.gguf"})
    """

    def __init__(self, context: DriverContext, options: Mapping[str, Any] | None = None) -> None:
        self.context = context
        config = context.config
        self.options: dict[str, Any] = {**config.backend_options, **(options or {})}
        if config.model_path is not None:
            self.options.setdefault("model_path", config.model_path)
        if config.llama_server_url is not None:
            # The seed API's name for a server URL; create_engine passes it to the backend as given.
            self.options.setdefault("llama_server_url", config.llama_server_url)
        self._engines: list[InferenceEngine] = []
        self._executor: ThreadPoolExecutor | None = None

    def _open(self, count: int) -> list[InferenceEngine]:
        from llamatelemetry.inference.api import create_engine

        engines: list[InferenceEngine] = []
        try:
            for _ in range(count):
                engines.append(create_engine(self.context.backend, **self.options).start())
        except BaseException:
            for engine in engines:
                engine.shutdown()
            raise
        return engines

    async def start(self, max_in_flight: int | None) -> int:
        """Open and start one engine per stream (in a thread: an in-process backend loads its model here)."""
        streams = max_in_flight
        if streams is None:
            streams = DEFAULT_ENGINE_STREAMS
            self.context.notice(f"backend {self.context.backend!r} runs through its engine: an open-loop test without "
                                f"max_concurrency runs at most {streams} requests at once (one engine each)")
        self._executor = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="llamatelemetry-bench")
        self._engines = await asyncio.get_running_loop().run_in_executor(self._executor, self._open, streams)
        return streams

    def _generate(self, engine: InferenceEngine, request: LoadRequest) -> RequestOutcome:
        from llamatelemetry.inference.base import InferenceRequest
        from llamatelemetry.inference.types import SamplingParams

        config = self.context.config
        inference = InferenceRequest(
            messages=[dict(m) for m in request.prompt.messages], max_tokens=request.max_tokens,
            sampling=SamplingParams(temperature=config.temperature, seed=request.seed), operation=config.operation)
        sent = time.perf_counter()
        try:
            result = engine.generate(inference)
        except Exception as exc:
            return RequestOutcome(sent=sent, ended=time.perf_counter(), error=exc)
        ended = time.perf_counter()
        return RequestOutcome(
            sent=sent, ended=ended, ttft_ms=result.ttft_ms, input_tokens=result.input_tokens,
            cached_input_tokens=result.cached_input_tokens, output_tokens=result.output_tokens,
            prefill_tps=result.prefill_tps, decode_tps=result.decode_tps, finish_reason=result.finish_reason)

    async def send(self, request: LoadRequest) -> RequestOutcome:
        """Run the request on its stream's engine, in a thread, inside the caller's span context."""
        assert self._executor is not None, "start() first"
        call = functools.partial(contextvars.copy_context().run, self._generate, self._engines[request.slot], request)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def test_started(self) -> None:
        """Nothing to read: an engine has no server counters."""

    async def test_finished(self) -> ServerFigures | None:
        """No server figures."""
        return None

    def describe(self) -> DriverDescription:
        """The backend's model name, and the model file when one was given."""
        backend = self._engines[0].backend if self._engines else None
        model_path = self.options.get("model_path")
        server: dict[str, Any] | None = None
        address = getattr(backend, "server_address", None)
        if address:
            port = getattr(backend, "server_port", None)
            server = {"url": f"{address}:{port}" if port else str(address)}
        return DriverDescription(
            model_name=getattr(backend, "model_name", None),
            model_path=os.fspath(model_path) if isinstance(model_path, (str, os.PathLike)) else None, server=server)

    async def close(self) -> None:
        """Shut every engine down and stop the threads."""
        engines, self._engines = self._engines, []
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def shutdown() -> None:
            for engine in engines:
                try:
                    engine.shutdown()
                except Exception:  # one engine failing to stop must not leave the others running
                    log.warning("engine %r failed to shut down", engine, exc_info=True)

        await asyncio.get_running_loop().run_in_executor(executor, shutdown)
        executor.shutdown(wait=True)
