"""``BenchmarkRunner``: load a backend, measure every request, and return a ``BenchmarkReport``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from llamatelemetry.bench.config import DEFAULT_SERVER_URL, BenchmarkConfig, LoadSpec, ProgressCallback
from llamatelemetry.bench.environment import environment_fingerprint, model_info, server_info
from llamatelemetry.bench.gpu_monitor import GPUMonitor, default_gpu_monitor, gpu_environment
from llamatelemetry.bench.prompts import Prompt, as_prompts
from llamatelemetry.bench.records import TestResult
from llamatelemetry.bench.report import BenchmarkReport

__all__ = ["BenchmarkRunner"]

_LLAMA_CPP = "llama.cpp"


def _levels(value: int | Iterable[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _rates(value: float | Iterable[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    return (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)


def _run_coroutine(coroutine: Any) -> Any:
    """``asyncio.run``, also from inside a running event loop (a notebook): then on a helper thread."""
    import asyncio

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
    """Benchmarks a backend: a llama.cpp server under concurrent streaming load, or any registered backend.

    With ``backend="llama.cpp"`` and a server URL, requests stream over HTTP from this one
    process (asyncio), ``concurrency`` at a time or at Poisson ``request_rate``. Any other
    backend, or llama.cpp given only ``model_path=``, runs in-process through ``create_engine``,
    one request at a time. Every request is traced (a ``benchmark request`` span around the
    GenAI span) when telemetry is initialized.

    Example::

        from llamatelemetry.bench import BenchmarkRunner

        report = BenchmarkRunner(backend="llama.cpp").run(
            llama_server_url="http://127.0.0.1:8090", n_tokens=128, concurrency=[1, 4])
        report.save("report.json")
    """

    def __init__(self, backend: str = _LLAMA_CPP, *, backend_options: Mapping[str, Any] | None = None,
                 progress: ProgressCallback | None = None,
                 gpu_monitor: GPUMonitor | Literal["auto"] | None = "auto") -> None:
        if not isinstance(backend, str) or not backend.strip():
            raise TypeError("BenchmarkRunner(backend=...) needs a backend name such as 'llama.cpp'.")
        self.backend = backend.strip()
        self.backend_options = dict(backend_options or {})
        self.progress = progress
        self._gpu_monitor = gpu_monitor

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

        ``llama_server_url`` defaults to ``http://127.0.0.1:8090`` for llama.cpp unless
        ``model_path`` asks for the model in this process. ``prompts`` defaults to the built-in
        set; ``num_requests`` (per test) to one pass over the prompts. See ``BenchmarkConfig``
        for every other setting.
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
        import asyncio

        config = self.config(llama_server_url=llama_server_url, prompts=prompts, n_tokens=n_tokens, **options)
        if self._uses_server(config):
            return await self._run_server(config, as_prompts(prompts))
        return await asyncio.to_thread(self._run_engine, config, as_prompts(prompts))

    def config(self, *, llama_server_url: str | None = None,
               prompts: Sequence[str | Prompt | Mapping[str, Any]] | None = None, n_tokens: int = 128,
               concurrency: int | Sequence[int] = 1, request_rate: float | Sequence[float] | None = None,
               model_path: str | os.PathLike[str] | None = None, prompt_set: str | None = None,
               **options: Any) -> BenchmarkConfig:
        """The ``BenchmarkConfig`` that ``run`` would use for these arguments."""
        if prompt_set is None:
            prompt_set = "builtin" if prompts is None else f"custom ({len(prompts)} prompts)"
        is_llamacpp = self._is_llamacpp()
        if llama_server_url is None and is_llamacpp and model_path is None:
            llama_server_url = DEFAULT_SERVER_URL
        return BenchmarkConfig(
            backend=self.backend, llama_server_url=llama_server_url,
            model_path=os.fspath(model_path) if model_path is not None else None, n_tokens=n_tokens,
            concurrency=_levels(concurrency), request_rates=_rates(request_rate), prompt_set=prompt_set,
            backend_options=self.backend_options, **options)

    def run_config(self, config: BenchmarkConfig, prompts: Sequence[Prompt] | None = None) -> BenchmarkReport:
        """Run a prepared ``BenchmarkConfig`` (prompts default to the built-in set)."""
        chosen = list(prompts) if prompts is not None else as_prompts(None)
        if self._uses_server(config):
            report: BenchmarkReport = _run_coroutine(self._run_server(config, chosen))
            return report
        return self._run_engine(config, chosen)

    # ------------------------------------------------------------------ internals

    def _is_llamacpp(self) -> bool:
        from llamatelemetry.plugins import get_plugin_manager

        spec = get_plugin_manager().backends().get(self.backend.lower())
        if spec is not None:
            return spec.name == _LLAMA_CPP
        from llamatelemetry.plugins.catalog import extra_for_backend

        known = extra_for_backend(self.backend)
        return known is not None and known.extra == "llamacpp"

    def _uses_server(self, config: BenchmarkConfig) -> bool:
        return self._is_llamacpp() and config.llama_server_url is not None

    def _monitor(self) -> GPUMonitor | None:
        if self._gpu_monitor == "auto":
            return default_gpu_monitor()
        return self._gpu_monitor

    def _report(self, config: BenchmarkConfig, tests: list[TestResult], *, server: dict[str, Any] | None,
                model: dict[str, Any] | None) -> BenchmarkReport:
        environment = environment_fingerprint(server=server, model=model, backend=self.backend,
                                              gpu=gpu_environment())
        return BenchmarkReport(tests=tuple(tests), environment=environment, config=config.to_dict(), name=config.name)

    async def _run_server(self, config: BenchmarkConfig, prompts: Sequence[Prompt]) -> BenchmarkReport:
        from llamatelemetry.bench.llamacpp_load import LlamaCppLoad

        specs = config.load_specs()
        load = LlamaCppLoad(config, prompts, progress=self.progress, gpu_monitor=self._monitor())
        tests = await load.run(specs)
        model_path = config.model_path
        served = load.props.get("model_path")
        if model_path is None and isinstance(served, str) and _is_local(config.llama_server_url) and os.path.isfile(
                served):
            model_path = served  # the server runs on this machine: fingerprint the very file it serves
        import asyncio

        model = await asyncio.to_thread(model_info, model_path, name=load.model_id or served,
                                        hash_file=config.hash_model)
        return self._report(config, tests, server=server_info(config.llama_server_url, load.props, load.model_meta),
                            model=model)

    def _run_engine(self, config: BenchmarkConfig, prompts: Sequence[Prompt]) -> BenchmarkReport:
        from llamatelemetry.bench.engine_load import EngineLoad
        from llamatelemetry.inference.api import create_engine

        specs: list[LoadSpec] = config.load_specs()
        if config.request_rates is not None or any(s.concurrency not in (None, 1) for s in specs):
            raise ValueError(f"Backend {self.backend!r} runs in this process, one request at a time: concurrency and "
                             "request_rate need a llama.cpp server (pass llama_server_url=...).")
        options = dict(config.backend_options)
        if config.model_path is not None:
            options.setdefault("model_path", config.model_path)
        engine = create_engine(self.backend, llama_server_url=config.llama_server_url, **options)
        with engine:
            tests = EngineLoad(config, prompts, engine, progress=self.progress, gpu_monitor=self._monitor()).run(
                [LoadSpec("sequential", "sequential", 1, None)])
        model_name = getattr(engine.backend, "model_name", None)
        model = model_info(config.model_path, name=model_name, hash_file=config.hash_model)
        return self._report(config, tests, server=None, model=model)


def _is_local(url: str | None) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url or "").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
