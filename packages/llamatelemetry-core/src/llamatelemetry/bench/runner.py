"""``BenchmarkRunner``: load a backend through its load driver, measure every request, return a report."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from llamatelemetry.bench.config import BenchmarkConfig, ProgressCallback
from llamatelemetry.bench.drivers import (
    DriverContext,
    EngineLoadDriver,
    LoadDriver,
    LoadDriverError,
    find_load_driver,
    load_factory,
)
from llamatelemetry.bench.environment import environment_fingerprint, model_info
from llamatelemetry.bench.gpu_monitor import GPUMonitor, default_gpu_monitor, gpu_environment
from llamatelemetry.bench.load import LoadRunner
from llamatelemetry.bench.prompts import Prompt, as_prompts
from llamatelemetry.bench.report import BenchmarkReport

__all__ = ["BenchmarkRunner"]

log = logging.getLogger("llamatelemetry.bench")


def _levels(value: int | Iterable[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _rates(value: float | Iterable[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    return (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)


def _run_coroutine(coroutine: Any) -> Any:
    """``asyncio.run``, also from inside a running event loop (a notebook): then on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="llamatelemetry-bench", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class BenchmarkRunner:
    """Benchmarks a backend under concurrent load, through the load driver its plugin registered.

    A plugin may register a load driver for its backends (hook ``llamatelemetry_register_load_drivers``):
    the llama.cpp plugin's streams from a llama.cpp server over HTTP and reads the server's
    ``/metrics`` and ``/slots``. Any other backend runs through ``create_engine``, one engine per
    concurrent stream (``EngineLoadDriver``). Either way ``concurrency`` streams run at once, or
    requests arrive at Poisson ``request_rate``; every request is traced (a ``benchmark request``
    span around the GenAI span) when telemetry is initialized.

    Example::

        from llamatelemetry.bench import BenchmarkRunner

        report = BenchmarkRunner(backend="llama.cpp").run(
            llama_server_url="http://127.0.0.1:8090", n_tokens=128, concurrency=[1, 4])
        report.save("report.json")
    """

    def __init__(self, backend: str = "llama.cpp", *, backend_options: Mapping[str, Any] | None = None,
                 driver_options: Mapping[str, Any] | None = None, progress: ProgressCallback | None = None,
                 gpu_monitor: GPUMonitor | Literal["auto"] | None = "auto",
                 notice: Callable[[str], None] | None = None) -> None:
        if not isinstance(backend, str) or not backend.strip():
            raise TypeError("BenchmarkRunner(backend=...) needs a backend name such as 'llama.cpp'.")
        self.backend = backend.strip()
        self.backend_options = dict(backend_options or {})
        self.driver_options = dict(driver_options or {})
        self.progress = progress
        self._gpu_monitor = gpu_monitor
        #: Where a driver's one-line messages go (``starting a server ...``); the log by default.
        self.notice: Callable[[str], None] = notice if notice is not None else _notice

    # ------------------------------------------------------------------ public API

    def run(
        self,
        llama_server_url: str | None = None,
        prompts: Sequence[str | Prompt | Mapping[str, Any]] | None = None,
        n_tokens: int = 128,
        *,
        concurrency: int | Sequence[int] = 1,
        request_rate: float | Sequence[float] | None = None,
        max_concurrency: int | None = None,
        num_requests: int | None = None,
        warmup: int | None = None,
        seed: int = 0,
        cache_prompt: bool = False,
        ignore_eos: bool = True,
        temperature: float = 0.0,
        operation: Literal["chat", "text_completion"] = "chat",
        timeout_s: float = 300.0,
        max_duration_s: float | None = None,
        model_path: str | os.PathLike[str] | None = None,
        hash_model: bool = True,
        name: str = "benchmark",
        api_key: str | None = None,
        prompt_set: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> BenchmarkReport:
        """Run one test per concurrency level (or per request rate) and return the report.

        ``llama_server_url`` is the server to load; what a backend does without one is up to its
        driver (llama.cpp's tries ``http://127.0.0.1:8090``, or loads ``model_path`` in-process).
        ``prompts`` defaults to the built-in set; ``num_requests`` (per test) to one pass over the
        prompts. See ``BenchmarkConfig`` for every other setting.
        """
        config = self.config(
            llama_server_url=llama_server_url, prompts=prompts, n_tokens=n_tokens, concurrency=concurrency,
            request_rate=request_rate, max_concurrency=max_concurrency, num_requests=num_requests, warmup=warmup,
            seed=seed, cache_prompt=cache_prompt, ignore_eos=ignore_eos, temperature=temperature,
            operation=operation, timeout_s=timeout_s, max_duration_s=max_duration_s, model_path=model_path,
            hash_model=hash_model, name=name, api_key=api_key, prompt_set=prompt_set,
            extra_body=dict(extra_body or {}))
        return self.run_config(config, as_prompts(prompts))

    async def arun(self, llama_server_url: str | None = None,
                   prompts: Sequence[str | Prompt | Mapping[str, Any]] | None = None, n_tokens: int = 128,
                   **options: Any) -> BenchmarkReport:
        """``run`` as a coroutine, for code that already runs an event loop."""
        config = self.config(llama_server_url=llama_server_url, prompts=prompts, n_tokens=n_tokens, **options)
        return await self._run(config, as_prompts(prompts))

    def config(self, *, llama_server_url: str | None = None,
               prompts: Sequence[str | Prompt | Mapping[str, Any]] | None = None, n_tokens: int = 128,
               concurrency: int | Sequence[int] = 1, request_rate: float | Sequence[float] | None = None,
               model_path: str | os.PathLike[str] | None = None, prompt_set: str | None = None,
               **options: Any) -> BenchmarkConfig:
        """The ``BenchmarkConfig`` that ``run`` would use for these arguments."""
        if prompt_set is None:
            prompt_set = "builtin" if prompts is None else f"custom ({len(prompts)} prompts)"
        return BenchmarkConfig(
            backend=self.backend, llama_server_url=llama_server_url,
            model_path=os.fspath(model_path) if model_path is not None else None, n_tokens=n_tokens,
            concurrency=_levels(concurrency), request_rates=_rates(request_rate), prompt_set=prompt_set,
            backend_options=self.backend_options, driver_options=self.driver_options, **options)

    def run_config(self, config: BenchmarkConfig, prompts: Sequence[Prompt] | None = None) -> BenchmarkReport:
        """Run a prepared ``BenchmarkConfig`` (prompts default to the built-in set)."""
        chosen = list(prompts) if prompts is not None else as_prompts(None)
        report: BenchmarkReport = _run_coroutine(self._run(config, chosen))
        return report

    def driver(self, config: BenchmarkConfig) -> LoadDriver:
        """The load driver for ``config``: the backend's registered one, else ``EngineLoadDriver``."""
        context = DriverContext(backend=self.backend, config=config, options=config.driver_options,
                                notice=self.notice)
        spec = find_load_driver(self.backend)
        if spec is None:
            if config.driver_options:
                raise LoadDriverError(f"Backend {self.backend!r} has no load driver of its own, so the driver options "
                                      f"{sorted(config.driver_options)} mean nothing to it; pass backend_options.")
            return EngineLoadDriver(context)
        driver = load_factory(spec)(context)
        if driver is None:
            return EngineLoadDriver(context)
        if not isinstance(driver, LoadDriver):
            raise LoadDriverError(f"Load driver {spec.name!r} from {spec.distribution} returned "
                                  f"{type(driver).__name__}, which is not a LoadDriver (start, send, test_started, "
                                  "test_finished, describe, close).")
        return driver

    # ------------------------------------------------------------------ internals

    def _monitor(self) -> GPUMonitor | None:
        if self._gpu_monitor == "auto":
            return default_gpu_monitor()
        return self._gpu_monitor

    async def _run(self, config: BenchmarkConfig, prompts: Sequence[Prompt]) -> BenchmarkReport:
        specs = config.load_specs()
        driver = self.driver(config)
        load = LoadRunner(config, prompts, driver, progress=self.progress, gpu_monitor=self._monitor())
        try:
            await load.start(specs)
            tests = await load.run(specs)
            description = driver.describe()
            # Before close: a driver may delete the model file it made (llama.cpp's --tiny) when it closes.
            model = await asyncio.to_thread(model_info, description.model_path or config.model_path,
                                            name=description.model_name, hash_file=config.hash_model)
        finally:
            await driver.close()
        server: dict[str, Any] | None = None
        if description.server is not None:
            server = dict(description.server)
            if description.summary:
                server.setdefault("summary", description.summary)
        environment = environment_fingerprint(server=server, model=model, backend=self.backend,
                                              gpu=gpu_environment())
        return BenchmarkReport(tests=tuple(tests), environment=environment, config=config.to_dict(), name=config.name)


def _notice(message: str) -> None:
    log.info("%s", message)
