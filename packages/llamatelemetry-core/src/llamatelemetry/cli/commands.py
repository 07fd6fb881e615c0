"""The core's own subcommands, registered through the same hook as any plugin's.

``plugins`` lists plugins; ``bench`` benchmarks a backend (a llama.cpp server it may start itself);
``compare`` is the regression gate between two benchmark reports; ``doctor`` reports the
environment, GPUs, plugins and server kinds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamatelemetry.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from llamatelemetry.bench.report import BenchmarkReport


def _plugins(args: argparse.Namespace) -> int:
    from llamatelemetry.plugins import get_plugin_manager

    pm = get_plugin_manager()
    infos = pm.plugin_infos()
    conflicts = pm.conflicts()
    if args.json:
        print(json.dumps({
            "plugins": [{"name": i.name, "distribution": i.distribution, "version": i.version, "status": i.status,
                         "error": i.error, "provides": {k: list(v) for k, v in i.provides.items()}} for i in infos],
            "conflicts": conflicts,
        }, indent=2))
        return 0
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES")]
    for info in infos:
        provides = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in sorted(info.provides.items())) or "-"
        status = info.status if not info.error or info.status == "loaded" else f"{info.status} ({info.error})"
        rows.append((info.name, info.distribution or "-", info.version or "-", status, provides))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    for conflict in conflicts:
        print(f"conflict: {conflict}")
    return 0


# ==================================================================================== bench

_BENCH_EPILOG = """\
examples:
  llamatelemetry bench --tiny                                   # a generated tiny model, no download
  llamatelemetry bench --url http://127.0.0.1:8090 -c 1,4 --output report.json --plot report.html
  llamatelemetry bench --model model.gguf --rate 2,4 --num-requests 40 --prompts prompts.jsonl
  llamatelemetry compare base.json report.json --threshold 10     # exit 1 on a regression (a CI gate)
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 1,4)") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every level must be an integer >= 1")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers (e.g. 0.5,2)") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be > 0 requests per second")
    return values


def _add_bench_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark a llama.cpp server (or any backend): latency percentiles, throughput, a report",
        description="Send concurrent streaming requests (or Poisson arrivals) and report TTFT, every gap between "
                    "chunks, time per output token, end-to-end latency and throughput, with the server's own "
                    "timings beside the client's clock.",
        epilog=_BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("what to benchmark (one of)")
    where = target.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running llama.cpp server (default http://127.0.0.1:8090)")
    where.add_argument("--model", type=Path, help="a .gguf file: start a llama.cpp server on it for the run")
    where.add_argument("--tiny", action="store_true", help="start a server on a generated tiny model (no download)")
    target.add_argument("--backend", default="llama.cpp",
                        help="registered backend name (default llama.cpp); others run in-process, one at a time")
    target.add_argument("--in-process", action="store_true",
                        help="with --model: load the model in this process (llama-cpp-python) instead of a server")
    load = parser.add_argument_group("load")
    load.add_argument("-c", "--concurrency", type=_int_list, default=[1],
                      help="concurrent streams, one test per level: 1,2,4 (default 1)")
    load.add_argument("--rate", type=_float_list,
                      help="open loop instead: Poisson arrivals at these requests/s, one test per rate")
    load.add_argument("--max-concurrency", type=int, help="with --rate: cap on requests in flight")
    load.add_argument("-n", "--num-requests", type=int, help="measured requests per test (default: one per prompt)")
    load.add_argument("--n-tokens", "--max-tokens", dest="n_tokens", type=int, default=128,
                      help="output tokens per request (default 128)")
    load.add_argument("--warmup", type=int, help="warm-up requests per test, excluded (default: one per stream)")
    load.add_argument("--prompts", type=Path, help="a JSONL prompt file (default: the built-in varied-length set)")
    load.add_argument("--seed", type=int, default=0, help="seed for prompt order, arrivals and sampling (default 0)")
    load.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    load.add_argument("--cache-prompt", action=argparse.BooleanOptionalAction, default=False,
                      help="let llama.cpp reuse its prompt cache (default off: every prompt measured cold)")
    load.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                      help="generate exactly --n-tokens per request (default on)")
    load.add_argument("--operation", choices=["chat", "text_completion"], default="chat",
                      help="chat (the chat template, default) or raw text completion")
    load.add_argument("--timeout", type=float, default=300.0, help="seconds to wait on a response (default 300)")
    load.add_argument("--max-duration", type=float, help="stop sending new requests after this many seconds per test")
    load.add_argument("--name", default="benchmark", help="the report's name")
    load.add_argument("--api-key", default=os.environ.get("LLAMA_API_KEY"),
                      help="the server's API key (default: $LLAMA_API_KEY)")
    server = parser.add_argument_group("a server started by --model / --tiny")
    server.add_argument("--n-parallel", type=int, help="server slots (default: the largest concurrency, 4 for --rate)")
    server.add_argument("--ctx-size", type=int, help="total context (default 2048 per slot)")
    server.add_argument("--gpu-layers", type=int, default=99, help="layers to offload to a GPU (default 99)")
    server.add_argument("--threads", type=int, help="server CPU threads")
    server.add_argument("--server-kind", choices=["xllamacpp", "llama-server", "llama-cpp-python"],
                        help="which llama.cpp server to start (default: the first installed)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, help="write the report as JSON")
    out.add_argument("--plot", type=Path,
                     help="write a self-contained HTML page of latency distributions and throughput")
    out.add_argument("--otlp-endpoint", help="export the benchmark's spans and metrics over OTLP")
    out.add_argument("--trace-file", type=Path, help="write the benchmark's spans and metrics as JSON lines")
    out.add_argument("--no-hash", action="store_true", help="do not sha256 the model file (large models take a while)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_bench)


def _bench_error(message: str) -> int:
    print(f"llamatelemetry bench: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _bench_telemetry(args: argparse.Namespace) -> Iterator[None]:
    """Telemetry for the run when asked for (flags or the standard OTLP variables); none otherwise."""
    wanted = (args.otlp_endpoint or args.trace_file or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
              or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if not wanted:
        yield
        return
    import llamatelemetry

    options: dict[str, Any] = {"service_name": "llamatelemetry-bench"}
    if args.otlp_endpoint:
        options["otlp_endpoint"] = args.otlp_endpoint
    if args.trace_file:
        options["output_file"] = os.fspath(args.trace_file.expanduser())
    telemetry = llamatelemetry.init(**options)
    try:
        yield
    finally:
        telemetry.force_flush()
        stats = telemetry.export_stats
        llamatelemetry.shutdown()
        print(f"telemetry: {stats.exported} spans exported, {stats.dropped} dropped", file=sys.stderr)


@contextlib.contextmanager
def _bench_server(args: argparse.Namespace, levels: list[int]) -> Iterator[tuple[str | None, str | None]]:
    """Yield (server URL, local model path): a server started here for --model/--tiny, else --url's."""
    if args.url or args.in_process or not (args.model or args.tiny):
        yield args.url, os.fspath(args.model) if args.model else None
        return
    from llamatelemetry.plugins.catalog import import_plugin_module

    import_plugin_module("llamacpp", "llamatelemetry bench --model/--tiny")
    from llamatelemetry_llamacpp.server import ServerManager

    workdir = Path(tempfile.mkdtemp(prefix="llamatelemetry-bench-"))
    n_parallel = args.n_parallel or max(levels)
    if args.tiny:
        from llamatelemetry_llamacpp.testing import write_tiny_gguf

        # A long enough trained context that the built-in long prompts fit in each slot.
        model = Path(write_tiny_gguf(workdir / "tiny-llama.gguf", seed=0, n_ctx_train=4096))
    else:
        model = Path(args.model).expanduser()
        if not model.is_file():
            raise FileNotFoundError(f"model file not found: {model}")
    manager = ServerManager(log_dir=workdir)
    print(f"starting a llama.cpp server on {model.name} ({n_parallel} slots) ...", file=sys.stderr)
    manager.start_server(model, gpu_layers=args.gpu_layers, port=None, n_parallel=n_parallel,
                         ctx_size=args.ctx_size or 2048 * n_parallel, threads=args.threads, kind=args.server_kind,
                         flash_attn=False if args.tiny else None)
    try:
        yield manager.base_url, os.fspath(model)
    finally:
        manager.stop_server()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _bench(args: argparse.Namespace) -> int:
    from llamatelemetry.bench import BenchmarkRunner, load_prompts
    from llamatelemetry.bench.html import render_html
    from llamatelemetry.bench.render import ProgressBar, render_results
    from llamatelemetry.errors import LlamaTelemetryError

    levels: list[int] = args.concurrency
    if args.rate and len(levels) > 1:
        return _bench_error("give --concurrency levels or --rate rates, not both (--max-concurrency caps --rate)")
    if args.in_process and not args.model:
        return _bench_error("--in-process needs --model PATH")
    if args.rate:
        levels = [args.max_concurrency or 4]
    try:
        prompts = load_prompts(args.prompts) if args.prompts else None
        runner = BenchmarkRunner(backend=args.backend, progress=None if args.quiet else ProgressBar())
        with _bench_server(args, levels) as (url, model_path), _bench_telemetry(args):
            report = runner.run(
                llama_server_url=url, prompts=prompts, n_tokens=args.n_tokens,
                concurrency=args.concurrency if not args.rate else (args.max_concurrency or 1),
                request_rate=args.rate, max_concurrency=args.max_concurrency, num_requests=args.num_requests,
                warmup=args.warmup, seed=args.seed, cache_prompt=args.cache_prompt, ignore_eos=args.ignore_eos,
                temperature=args.temperature, operation=args.operation, timeout_s=args.timeout,
                max_duration_s=args.max_duration, model_path=model_path, hash_model=not args.no_hash,
                name=args.name, api_key=args.api_key,
                prompt_set=f"{args.prompts.name} ({len(prompts)} prompts)" if prompts else None)
    except (LlamaTelemetryError, ValueError, FileNotFoundError, ImportError) as exc:
        return _bench_error(str(exc))
    print(render_results(report))
    if args.output:
        print(f"\nreport written to {report.save(args.output)}")
    if args.plot:
        path = args.plot.expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
        print(f"plot written to {path}")
    # A test where nothing completed measured nothing: fail, so a script notices.
    return 1 if any(t.summary.completed == 0 for t in report.tests) else 0


# ==================================================================================== compare


def _load_report(path: Path) -> BenchmarkReport:
    from llamatelemetry.bench.report import BenchmarkReport

    return BenchmarkReport.load(path)


def _compare(args: argparse.Namespace) -> int:
    from llamatelemetry.bench.compare import compare_reports, environment_differences
    from llamatelemetry.bench.render import render_comparisons
    from llamatelemetry.bench.report import ReportFormatError

    try:
        baseline, current = _load_report(args.baseline), _load_report(args.current)
        comparisons = compare_reports(baseline, current, args.threshold, metrics=args.metric or None)
    except (ReportFormatError, ValueError) as exc:
        print(f"llamatelemetry compare: error: {exc}", file=sys.stderr)
        return 2
    regressions = [c for c in comparisons if c.regression]
    if args.json:
        import attrs

        print(json.dumps({"threshold_pct": args.threshold, "regressions": len(regressions),
                          "comparisons": [attrs.asdict(c) for c in comparisons]}, indent=2))
    else:
        for difference in environment_differences(baseline, current):
            print(f"warning: the reports ran in different environments: {difference}", file=sys.stderr)
        print(render_comparisons(comparisons, args.threshold))
    return 1 if regressions else 0


def _add_compare_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two benchmark reports; exit 1 on a regression (a CI gate)",
        description="Compare every test of BASELINE with the same test of CURRENT. Latency regresses when it rises "
                    "by more than --threshold percent, throughput when it falls by more. Exit status: 0 no "
                    "regression, 1 regression, 2 a report could not be read.")
    parser.add_argument("baseline", type=Path, help="the baseline report (JSON from llamatelemetry bench --output)")
    parser.add_argument("current", type=Path, help="the report to check")
    parser.add_argument("--threshold", type=float, default=10.0, help="allowed worsening, percent (default 10)")
    parser.add_argument("--metric", action="append",
                        help="compare only this metric (repeatable): ttft_ms.p99, throughput.output_tokens_per_s, ...")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_compare)


# ==================================================================================== doctor


def _doctor_report() -> dict[str, Any]:
    import platform

    from llamatelemetry._version import __version__
    from llamatelemetry.bench.environment import cpu_info, library_versions
    from llamatelemetry.bench.gpu_monitor import gpu_environment
    from llamatelemetry.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.ensure_loaded()
    plugins = [{"name": i.name, "distribution": i.distribution, "version": i.version, "status": i.status,
                "error": i.error} for i in pm.plugin_infos()]
    backends = sorted({spec.name for spec in pm.backends().values()})
    try:
        from llamatelemetry_llamacpp.server import available_server_kinds

        server_kinds: list[str] | None = available_server_kinds()
    except ImportError:
        server_kinds = None
    gpu_module = True
    try:
        import importlib.util

        gpu_module = importlib.util.find_spec("llamatelemetry.gpu") is not None
    except (ImportError, ValueError):
        gpu_module = False
    telemetry = {name: os.environ[name] for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                                                     "OTEL_SERVICE_NAME", "LLAMATELEMETRY_PLUGINS",
                                                     "LLAMATELEMETRY_DISABLE_PLUGINS") if name in os.environ}
    return {
        "llamatelemetry": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_info(), "libraries": library_versions(),
        "gpu": gpu_environment() if gpu_module else None, "gpu_module": gpu_module,
        "plugins": plugins, "backends": backends, "llama_cpp_server_kinds": server_kinds,
        "conflicts": pm.conflicts(), "environment": telemetry,
    }


def _doctor(args: argparse.Namespace) -> int:
    info = _doctor_report()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cpu = info["cpu"]
    memory = cpu.get("memory_total_bytes")
    print(f"llamatelemetry {info['llamatelemetry']}")
    print(f"  python    {info['python']}")
    print(f"  platform  {info['platform']}")
    print(f"  cpu       {cpu.get('model')} ({cpu.get('logical_cores')} logical cores"
          + (f", {memory / 2**30:.1f} GiB memory)" if memory else ")"))
    print("\nlibraries")
    for name, version in info["libraries"].items():
        print(f"  {name:<28} {version}")
    print("\nGPUs")
    gpu = info["gpu"]
    if not info["gpu_module"]:
        print("  (llamatelemetry.gpu is not available in this version: no GPU figures)")
    elif gpu is None:
        print("  none found")
    else:
        for device in gpu.get("details", []):
            print(f"  [{device.get('index')}] {device.get('name')}")
        print(f"  driver {gpu.get('driver_version')}, CUDA {gpu.get('cuda_version')}")
    print("\nplugins")
    for plugin in info["plugins"]:
        failed = plugin["error"] and plugin["status"] != "loaded"
        status = plugin["status"] + (f" ({plugin['error']})" if failed else "")
        print(f"  {plugin['name']:<28} {plugin['distribution'] or '-'} {plugin['version'] or '-'}  {status}")
    for conflict in info["conflicts"]:
        print(f"  conflict: {conflict}")
    print("\nbackends: " + (", ".join(info["backends"]) or "none (install a plugin, e.g. "
                                                                'pip install "llamatelemetry-core[llamacpp]")'))
    kinds = info["llama_cpp_server_kinds"]
    if kinds is None:
        print('llama.cpp servers: the llama.cpp plugin is not installed (pip install "llamatelemetry-core[llamacpp]")')
    else:
        print("llama.cpp servers: " + (", ".join(kinds) or 'none installed (pip install '
                                                           '"llamatelemetry-llamacpp[server]")'))
    if info["environment"]:
        print("\nenvironment")
        for name, value in info["environment"].items():
            print(f"  {name}={value}")
    return 0


@hookimpl
def llamatelemetry_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``plugins``, ``bench``, ``compare`` and ``doctor``."""
    parser = subparsers.add_parser("plugins", help="list installed plugins, their versions and what they register")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_plugins)
    _add_bench_parser(subparsers)
    _add_compare_parser(subparsers)
    doctor = subparsers.add_parser("doctor", help="report the environment, GPUs, plugins, backends and server kinds")
    doctor.add_argument("--json", action="store_true", help="print JSON instead of text")
    doctor.set_defaults(handler=_doctor)
