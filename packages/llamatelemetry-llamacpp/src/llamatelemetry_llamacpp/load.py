"""The llama.cpp load driver of ``llamatelemetry bench``: streams from a llama.cpp server and reads its own figures.

Requests stream over HTTP from one process (``AsyncLlamaCppClient``, asyncio). Per output chunk
the driver takes one timestamp and reads the server's cumulative ``predicted_n`` (llama.cpp's
``timings_per_token``), which says how many tokens the chunk carried; everything else is
computed after the response ended. Around each test it reads how far the server's ``/metrics``
counters moved and polls ``/slots``, and hands those to the report as ``ServerFigures``.

It can start the server itself (``--model PATH`` or ``--tiny``, a generated tiny model) and stops
it afterwards; ``--in-process`` with ``--model`` (or, from Python, a ``model_path`` without a
server URL) runs the model in this process through the engine-based driver instead.

Registered by ``llamatelemetry_llamacpp.plugin`` as ``LoadDriverSpec(factory="...load:FACTORY")``.
This module is imported when the ``bench`` command line is built: it imports nothing heavy at
module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llamatelemetry.bench.drivers import (
    DoctorCheck,
    DriverArguments,
    DriverContext,
    DriverDescription,
    EngineLoadDriver,
    LoadDriver,
    LoadDriverError,
    LoadDriverFactory,
    LoadRequest,
    RequestOutcome,
)
from llamatelemetry.bench.records import ServerFigure, ServerFigures

if TYPE_CHECKING:
    from llamatelemetry_llamacpp.client import AsyncLlamaCppClient
    from llamatelemetry_llamacpp.server import ServerManager

__all__ = ["DEFAULT_SERVER_URL", "STREAMS_PER_CLIENT", "LlamaCppLoadDriver", "LlamaCppDriverFactory", "FACTORY"]

log = logging.getLogger("llamatelemetry.llamacpp.load")

#: Where a benchmark looks for a server when given neither a URL nor a model.
DEFAULT_SERVER_URL = "http://127.0.0.1:8090"
#: httpx pools 100 connections per client; a stream holds one, so beyond this the driver opens another client.
STREAMS_PER_CLIENT = 64
#: Requests in flight at once for an open-loop test given no max_concurrency (far above what one server serves).
UNCAPPED_IN_FLIGHT = 256
_SLOTS_POLL_S = 0.05
#: Server figure name -> (``/metrics`` family, unit, label for the results table).
_METRIC_FAMILIES: dict[str, tuple[str, str, str]] = {
    "prompt_tokens": ("llamacpp:prompt_tokens_total", "tokens", "prompt tokens"),
    "prompt_tokens_cached": ("llamacpp:prompt_tokens_cached_total", "tokens", "prompt tokens from cache"),
    "tokens_predicted": ("llamacpp:tokens_predicted_total", "tokens", "tokens predicted"),
    "decode_calls": ("llamacpp:n_decode_total", "calls", "llama_decode calls"),
    "prompt_seconds": ("llamacpp:prompt_seconds_total", "s", "prompt processing"),
    "predicted_seconds": ("llamacpp:tokens_predicted_seconds_total", "s", "generation"),
}
#: Server /props fields that describe the build and the settings that shape performance.
_PROPS_FIELDS = ("build_info", "total_slots", "model_path", "model_alias", "model_ftype", "chat_template_caps")


def _carries_output(raw: Mapping[str, Any]) -> bool:
    """A chat chunk with reasoning or tool-call output but no text (text is checked first, for speed)."""
    choices = raw.get("choices")
    if not choices:
        return False
    delta = choices[0].get("delta")
    return bool(delta and (delta.get("reasoning_content") or delta.get("tool_calls")))


def _tokens_per_chunk(cumulative: Sequence[int | None]) -> tuple[int, ...] | None:
    if not cumulative or any(c is None for c in cumulative):
        return None
    counts: list[int] = []
    previous = 0
    for value in cumulative:
        assert value is not None
        counts.append(value - previous)
        previous = value
    return tuple(counts)


def _is_local(url: str | None) -> bool:
    host = urlsplit(url or "").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def server_info(url: str, props: Mapping[str, Any] | None,
                model_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The llama.cpp server's build and settings from ``/props`` and ``/v1/models``."""
    info: dict[str, Any] = {"url": url}
    if props:
        info.update({k: props[k] for k in _PROPS_FIELDS if k in props})
        settings = props.get("default_generation_settings")
        if isinstance(settings, Mapping) and "n_ctx" in settings:
            info["n_ctx_per_slot"] = settings["n_ctx"]
    if model_meta:
        info["model_meta"] = {k: model_meta[k] for k in ("n_params", "n_ctx_train", "n_vocab", "size", "ftype")
                              if k in model_meta}
    return info


class _Launch:
    """A llama.cpp server this driver starts for the run (``--model`` / ``--tiny``) and stops afterwards."""

    def __init__(self, context: DriverContext, model: str | os.PathLike[str] | None, tiny: bool) -> None:
        options = context.options
        config = context.config
        self.context = context
        self.model = model
        self.tiny = tiny
        levels = [config.max_concurrency or 4] if config.request_rates is not None else list(config.concurrency)
        self.n_parallel: int = options.get("n_parallel") or max(levels)
        self.ctx_size: int = options.get("ctx_size") or 2048 * self.n_parallel
        self.gpu_layers: int = options.get("gpu_layers", 99)
        self.threads: int | None = options.get("threads")
        self.kind: str | None = options.get("server_kind")
        self.workdir: Path | None = None
        self.manager: ServerManager | None = None
        self.model_file: Path | None = None

    def start(self) -> str:
        """Write or find the model, start the server on a free port, and return its URL."""
        from llamatelemetry_llamacpp.server import ServerManager

        self.workdir = Path(tempfile.mkdtemp(prefix="llamatelemetry-bench-"))
        if self.tiny:
            from llamatelemetry_llamacpp.testing import write_tiny_gguf

            # A long enough trained context that the built-in long prompts fit in each slot.
            model = Path(write_tiny_gguf(self.workdir / "tiny-llama.gguf", seed=0, n_ctx_train=4096))
        else:
            assert self.model is not None
            model = Path(self.model).expanduser()
            if not model.is_file():
                raise FileNotFoundError(f"model file not found: {model}")
        self.model_file = model
        self.manager = ServerManager(log_dir=self.workdir)
        self.context.notice(f"starting a llama.cpp server on {model.name} ({self.n_parallel} slots) ...")
        self.manager.start_server(model, gpu_layers=self.gpu_layers, port=None, n_parallel=self.n_parallel,
                                  ctx_size=self.ctx_size, threads=self.threads, kind=self.kind,
                                  flash_attn=False if self.tiny else None)
        return self.manager.base_url

    def stop(self) -> None:
        """Stop the server and remove what was written for it."""
        if self.manager is not None:
            self.manager.stop_server()
            self.manager = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class LlamaCppLoadDriver:
    """Streams a benchmark's requests from one llama.cpp server and reads ``/metrics`` and ``/slots`` around each test.

    Example::

        from llamatelemetry.bench import BenchmarkRunner

        BenchmarkRunner("llama.cpp").run(llama_server_url="http://127.0.0.1:8090", concurrency=4)
        BenchmarkRunner("llama.cpp", driver_options={"tiny": True}).run(concurrency=[1, 2])
    """

    def __init__(self, context: DriverContext, url: str | None, *, launch: _Launch | None = None) -> None:
        self.context = context
        self.url = url
        self._launch = launch
        options = context.options
        config = context.config
        self.poll_slots: bool = options.get("poll_slots", True)
        self.props: dict[str, Any] = {}
        #: The served model's id and llama.cpp's figures about it (``n_params``, ``n_ctx_train``, ...).
        self.model_id: str | None = None
        self.model_meta: dict[str, Any] = {}
        self._clients: list[AsyncLlamaCppClient] = []
        self._extra: dict[str, Any] = dict(config.extra_body)
        if options.get("timings_per_token", True):
            self._extra["timings_per_token"] = True  # says how many tokens each chunk carried
        if config.ignore_eos:
            self._extra["ignore_eos"] = True
        self._before: dict[str, float] | None = None
        self._busy: list[int] = []
        self._stop_polling: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ set-up

    def _client(self) -> AsyncLlamaCppClient:
        from llamatelemetry_llamacpp.client import AsyncLlamaCppClient

        assert self.url is not None
        # retries=0: a resent request would hide a failure and distort its latency. Each request carries
        # its span's trace context (traceparent), so a tracing server's spans join the benchmark's trace.
        return AsyncLlamaCppClient(self.url, api_key=self.context.config.api_key,
                                   timeout=self.context.config.timeout_s, retries=0,
                                   propagate=self.context.options.get("propagate", True))

    async def start(self, max_in_flight: int | None) -> int:
        """Start the server when asked to, open enough clients, and read the server's settings."""
        from llamatelemetry_llamacpp.errors import LlamaCppError

        if self._launch is not None:
            self.url = await asyncio.to_thread(self._launch.start)
        streams = max_in_flight or UNCAPPED_IN_FLIGHT
        self._clients = [self._client() for _ in range(max(1, math.ceil(streams / STREAMS_PER_CLIENT)))]
        first = self._clients[0]
        await first.health()  # an unreachable or loading server fails here, with the client's clear message
        with contextlib.suppress(LlamaCppError):
            self.props = await first.props()
        with contextlib.suppress(LlamaCppError):
            models = await first.models()
            if models:
                self.model_id, self.model_meta = models[0].id, dict(models[0].meta)
        for client in self._clients:
            # Read once now, so no measured request pays for the span name's model lookup.
            with contextlib.suppress(LlamaCppError):
                await client.model_id()
        return streams

    async def close(self) -> None:
        """Close the clients, and stop the server if this driver started it."""
        if self._poller is not None and self._stop_polling is not None:
            self._stop_polling.set()
            await self._poller
            self._poller = None
        for client in self._clients:
            await client.aclose()
        self._clients = []
        if self._launch is not None:
            await asyncio.to_thread(self._launch.stop)

    # ------------------------------------------------------------------ one request

    async def send(self, request: LoadRequest) -> RequestOutcome:
        """Stream one request, stamping each chunk that carried output."""
        config = self.context.config
        client = self._clients[request.slot // STREAMS_PER_CLIENT % len(self._clients)]
        prompt = request.prompt
        stamps: list[float] = []
        cumulative: list[int | None] = []
        sent = time.perf_counter()
        try:
            if config.operation == "chat":
                stream = await client.chat.create(
                    messages=list(prompt.messages), max_tokens=request.max_tokens, temperature=config.temperature,
                    seed=request.seed, stream=True, cache_prompt=config.cache_prompt, **self._extra)
            else:
                stream = await client.completion(
                    prompt.text, n_predict=request.max_tokens, temperature=config.temperature, seed=request.seed,
                    stream=True, cache_prompt=config.cache_prompt, **self._extra)
            async for chunk in stream:
                # The hot path: one timestamp and one dict lookup per chunk, nothing else.
                now = time.perf_counter()
                raw = chunk.raw
                if chunk.delta_text or _carries_output(raw):
                    stamps.append(now)
                    timings = raw.get("timings")
                    cumulative.append(timings.get("predicted_n") if timings else None)
            ended = time.perf_counter()
            stats = stream.stats
        except Exception as exc:
            return RequestOutcome(sent=sent, ended=time.perf_counter(), chunk_times=stamps, error=exc)
        timings = stats.timings
        return RequestOutcome(
            sent=sent, ended=ended, chunk_times=stamps, tokens_per_chunk=_tokens_per_chunk(cumulative),
            input_tokens=stats.input_tokens, cached_input_tokens=stats.cached_input_tokens,
            output_tokens=stats.output_tokens, server_prompt_ms=timings.prompt_ms if timings else None,
            server_predicted_ms=timings.predicted_ms if timings else None,
            prefill_tps=timings.prompt_per_second if timings else None,
            decode_tps=timings.predicted_per_second if timings else None, finish_reason=stats.finish_reason)

    # ------------------------------------------------------------------ server figures

    async def _scrape(self) -> dict[str, float] | None:
        from llamatelemetry_llamacpp.errors import LlamaCppError
        from llamatelemetry_llamacpp.metrics_bridge import parse_prometheus_text

        try:
            text = await self._clients[0].metrics_text()
        except LlamaCppError:
            return None  # no --metrics on this server: the figures are optional
        families = parse_prometheus_text(text)
        values: dict[str, float] = {}
        for key, (family_name, _, _) in _METRIC_FAMILIES.items():
            family = families.get(family_name)
            if family is not None and family.samples:
                values[key] = sum(s.value for s in family.samples)
        return values

    async def _poll_slots(self, stop: asyncio.Event, seen: list[int]) -> None:
        from llamatelemetry_llamacpp.errors import LlamaCppError

        client = self._clients[0]
        while not stop.is_set():
            try:
                slots = await client.slots()
            except LlamaCppError:
                return  # /slots is switched off on this server
            seen.append(sum(1 for s in slots if s.get("is_processing")))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), _SLOTS_POLL_S)

    async def test_started(self) -> None:
        """Read the ``/metrics`` counters and start polling ``/slots``."""
        self._before = await self._scrape()
        self._busy = []
        if self.poll_slots:
            self._stop_polling = asyncio.Event()
            self._poller = asyncio.create_task(self._poll_slots(self._stop_polling, self._busy))

    async def test_finished(self) -> ServerFigures | None:
        """How far the counters moved over the test, and the most slots seen busy at once."""
        if self._poller is not None and self._stop_polling is not None:
            self._stop_polling.set()
            await self._poller
            self._poller = None
        after = await self._scrape()
        return self.server_figures(self._before, after, self._busy)

    @staticmethod
    def server_figures(before: Mapping[str, float] | None, after: Mapping[str, float] | None,
                       busy: Sequence[int]) -> ServerFigures | None:
        """The figures of a test from two ``/metrics`` readings and the busy-slot counts polled between them."""
        figures: dict[str, ServerFigure] = {}
        sources: list[str] = []
        if before is not None and after is not None:
            sources.append("llama.cpp /metrics")
            for key in after:
                if key in before:
                    _, unit, label = _METRIC_FAMILIES[key]
                    figures[key] = ServerFigure(value=round(after[key] - before[key], 6), unit=unit, label=label)
            predicted, calls = figures.get("tokens_predicted"), figures.get("decode_calls")
            if predicted is not None and calls is not None and predicted.value and calls.value:
                # Tokens per llama_decode call: how many streams the server really decoded together.
                figures["busy_slots_per_decode"] = ServerFigure(value=round(predicted.value / calls.value, 4),
                                                                label="streams per decode call")
        if busy:
            sources.append("/slots")
            figures["max_busy_slots"] = ServerFigure(value=max(busy), unit="slots", label="busy at most")
        return ServerFigures(figures=figures, source=", ".join(sources)) if figures else None

    # ------------------------------------------------------------------ the report

    def describe(self) -> DriverDescription:
        """The served model (its file, when the server runs on this machine) and the server's build and slots."""
        config = self.context.config
        served = self.props.get("model_path")
        model_path = config.model_path
        if model_path is None and self._launch is not None and self._launch.model_file is not None:
            model_path = os.fspath(self._launch.model_file)
        if model_path is None and isinstance(served, str) and _is_local(self.url) and os.path.isfile(served):
            model_path = served  # the server runs on this machine: fingerprint the very file it serves
        assert self.url is not None
        server = server_info(self.url, self.props, self.model_meta)
        summary = ", ".join(part for part in (
            f"build {server['build_info']}" if "build_info" in server else "",
            f"{server['total_slots']} slots" if "total_slots" in server else "") if part)
        return DriverDescription(model_name=self.model_id or (served if isinstance(served, str) else None),
                                 model_path=model_path, server=server, summary=summary or None)


class LlamaCppDriverFactory(LoadDriverFactory):
    """Makes the llama.cpp driver for a run, adds its ``bench`` options, and tells ``doctor`` the server kinds."""

    def __call__(self, context: DriverContext) -> LoadDriver | None:
        """A driver on ``--url`` (or a server it starts), the engine driver for ``--in-process``, else ``None``."""
        options = context.options
        url = options.get("url") or context.config.llama_server_url
        model, tiny = options.get("model"), bool(options.get("tiny"))
        if options.get("in_process"):
            if not model:
                raise LoadDriverError("--in-process needs --model PATH (the model to load in this process)")
            return EngineLoadDriver(context, options={"model_path": os.fspath(model)})
        if model or tiny:
            if url:
                raise LoadDriverError("give a server URL, or a model to start a server on (--model / --tiny), "
                                      "not both")
            return LlamaCppLoadDriver(context, None, launch=_Launch(context, model, tiny))
        if url is None:
            if context.config.model_path is not None:
                return None  # a model file and no server: llama-cpp-python in this process, through the engine
            url = DEFAULT_SERVER_URL
        return LlamaCppLoadDriver(context, url)

    def add_arguments(self, arguments: DriverArguments) -> None:
        """``--url``, ``--model``, ``--tiny``, ``--in-process`` and the settings of a server started here."""
        where = arguments.add_mutually_exclusive_group()
        where.add_argument("--url", help=f"a running llama.cpp server (default {DEFAULT_SERVER_URL})")
        where.add_argument("--model", type=Path, help="a .gguf file: start a llama.cpp server on it for the run")
        where.add_argument("--tiny", action="store_true",
                           help="start a server on a generated tiny model (no download)")
        arguments.add_argument("--in-process", action="store_true",
                               help="with --model: load the model in this process (llama-cpp-python) instead")
        arguments.add_argument("--n-parallel", type=int,
                               help="server slots (default: the largest concurrency, 4 for --rate)")
        arguments.add_argument("--ctx-size", type=int, help="total context of a started server (default 2048 per slot)")
        arguments.add_argument("--gpu-layers", type=int, default=99, help="layers to offload to a GPU (default 99)")
        arguments.add_argument("--threads", type=int, help="CPU threads of a started server")
        arguments.add_argument("--server-kind", choices=["xllamacpp", "llama-server", "llama-cpp-python"],
                               help="which llama.cpp server to start (default: the first installed)")
        arguments.add_argument("--poll-slots", action="store_true", default=True,
                               help="poll /slots during a test to see how many slots were busy (default on)")
        arguments.add_argument("--no-poll-slots", dest="poll_slots", action="store_false",
                               help="do not poll /slots")

    def doctor(self) -> Iterable[DoctorCheck]:
        """The kinds of llama.cpp server that can start here."""
        from llamatelemetry_llamacpp.server import available_server_kinds

        kinds = available_server_kinds()
        text = ", ".join(kinds) or 'none installed (pip install "llamatelemetry-llamacpp[server]")'
        return [DoctorCheck(key="llama_cpp_server_kinds", label="llama.cpp servers", value=kinds, text=text)]


#: What ``LoadDriverSpec.factory`` refers to.
FACTORY = LlamaCppDriverFactory()
