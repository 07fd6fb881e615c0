"""The core's own subcommands, registered through the same hook as any plugin's.

``plugins`` lists plugins; ``bench`` benchmarks a backend through its load driver (each driver
adds its own options, such as llama.cpp's ``--url`` and ``--tiny``); ``compare`` is the
regression gate between two benchmark reports; ``doctor`` reports the environment, GPUs,
plugins, and what each load driver checks (llama.cpp: the server kinds that can start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamatelemetry.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from llamatelemetry.bench.report import BenchmarkReport

log = logging.getLogger("llamatelemetry.cli")


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
examples (--tiny, --url and --model come from the llama.cpp plugin's load driver):
  llamatelemetry bench --tiny                                   # a generated tiny model, no download
  llamatelemetry bench --url http://127.0.0.1:8090 -c 1,4 --output report.json --plot report.html
  llamatelemetry bench --model model.gguf --rate 2,4 --num-requests 40 --prompts prompts.jsonl
  llamatelemetry bench --backend my-backend -O base_url=http://127.0.0.1:8080 -c 1,4   # any backend, via its engine
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


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. base_url=http://127.0.0.1:8080)")
    try:
        value: Any = json.loads(raw)  # numbers, true/false, null, lists; anything else is a string
    except ValueError:
        value = raw
    return key.strip(), value


def _add_driver_arguments(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    """Each load driver's own options, in a group of its own; returns the actions by driver name."""
    from llamatelemetry.bench.drivers import DriverArguments, LoadDriverError, load_factory
    from llamatelemetry.plugins import get_plugin_manager

    owned: dict[str, list[argparse.Action]] = {}
    for spec in sorted(set(get_plugin_manager().load_drivers().values()), key=lambda s: s.name):
        try:
            add = getattr(load_factory(spec), "add_arguments", None)
            if add is None:
                continue
            group = parser.add_argument_group(f"{spec.name} load driver (--backend {', '.join(spec.backends)}; "
                                              f"from {spec.distribution or 'a plugin'})")
            arguments = DriverArguments(group)
            add(arguments)
        except (LoadDriverError, argparse.ArgumentError, TypeError, ValueError) as exc:
            # One broken driver must not take the whole command line down; its options are just missing.
            log.warning("load driver %r from %s could not add its bench options: %s", spec.name, spec.distribution,
                        exc)
            continue
        owned[spec.name] = arguments.actions
    return owned


def _add_bench_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark a backend under concurrent load: latency percentiles, throughput, a report",
        description="Send concurrent requests (or Poisson arrivals) and report TTFT, every gap between chunks, "
                    "time per output token, end-to-end latency and throughput, with the server's own figures "
                    "beside the client's clock. A backend whose plugin registered a load driver (llama.cpp) is "
                    "loaded by that driver; any other runs through its engine, one engine per concurrent stream.",
        epilog=_BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("what to benchmark")
    target.add_argument("--backend", default="llama.cpp", help="registered backend name (default llama.cpp)")
    target.add_argument("-O", "--backend-option", dest="backend_options", action="append", type=_key_value,
                        default=[], metavar="KEY=VALUE",
                        help="a keyword argument for the backend (create_engine), repeatable; the value is JSON "
                             "when it parses, else a string: -O base_url=http://127.0.0.1:8080 -O timeout=60")
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
                      help="let the server reuse its prompt cache (default off: every prompt measured cold)")
    load.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                      help="ask the server for exactly --n-tokens per request (default on)")
    load.add_argument("--operation", choices=["chat", "text_completion"], default="chat",
                      help="chat (the chat template, default) or raw text completion")
    load.add_argument("--timeout", type=float, default=300.0, help="seconds to wait on a response (default 300)")
    load.add_argument("--max-duration", type=float, help="stop sending new requests after this many seconds per test")
    load.add_argument("--name", default="benchmark", help="the report's name")
    load.add_argument("--api-key", default=os.environ.get("LLAMA_API_KEY"),
                      help="the server's API key (default: $LLAMA_API_KEY)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, help="write the report as JSON")
    out.add_argument("--plot", type=Path,
                     help="write a self-contained HTML page of latency distributions and throughput")
    out.add_argument("--otlp-endpoint", help="export the benchmark's spans and metrics over OTLP")
    out.add_argument("--trace-file", type=Path, help="write the benchmark's spans and metrics as JSON lines")
    out.add_argument("--no-hash", action="store_true", help="do not sha256 the model file (large models take a while)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_bench, driver_actions=_add_driver_arguments(parser))


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
        stats = telemetry.export_stats
        llamatelemetry.shutdown()  # delivers what is left within the shutdown deadline, even if the collector is down
        print(f"telemetry: {stats.exported} spans exported, {stats.dropped} dropped, {stats.undelivered} undelivered",
              file=sys.stderr)


def _driver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen backend's driver options; options of a driver that does not serve it are an error."""
    from llamatelemetry.bench.drivers import find_load_driver

    spec = find_load_driver(args.backend)
    chosen: dict[str, Any] = {}
    for name, actions in args.driver_actions.items():
        if spec is not None and name == spec.name:
            chosen.update({action.dest: getattr(args, action.dest) for action in actions})
            continue
        given = [action.option_strings[0] for action in actions
                 if action.option_strings and getattr(args, action.dest) != action.default]
        if given:
            raise ValueError(f"{', '.join(dict.fromkeys(given))}: options of the {name} load driver, which does not "
                             f"serve backend {args.backend!r} (use --backend-option KEY=VALUE for its options)")
    return chosen


def _stderr_notice(message: str) -> None:
    print(message, file=sys.stderr)


def _bench(args: argparse.Namespace) -> int:
    from llamatelemetry.bench import BenchmarkRunner, load_prompts
    from llamatelemetry.bench.html import render_html
    from llamatelemetry.bench.render import ProgressBar, render_results
    from llamatelemetry.errors import LlamaTelemetryError

    if args.rate and len(args.concurrency) > 1:
        return _bench_error("give --concurrency levels or --rate rates, not both (--max-concurrency caps --rate)")
    try:
        prompts = load_prompts(args.prompts) if args.prompts else None
        runner = BenchmarkRunner(backend=args.backend, backend_options=dict(args.backend_options),
                                 driver_options=_driver_options(args), notice=_stderr_notice,
                                 progress=None if args.quiet else ProgressBar())
        with _bench_telemetry(args):
            report = runner.run(
                prompts=prompts, n_tokens=args.n_tokens,
                concurrency=args.concurrency if not args.rate else (args.max_concurrency or 1),
                request_rate=args.rate, max_concurrency=args.max_concurrency, num_requests=args.num_requests,
                warmup=args.warmup, seed=args.seed, cache_prompt=args.cache_prompt, ignore_eos=args.ignore_eos,
                temperature=args.temperature, operation=args.operation, timeout_s=args.timeout,
                max_duration_s=args.max_duration, hash_model=not args.no_hash, name=args.name, api_key=args.api_key,
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


def _doctor_checks(pm: Any) -> list[dict[str, Any]]:
    """What each load driver adds to the report (llama.cpp: the server kinds that can start here)."""
    from llamatelemetry.bench.drivers import load_factory

    checks: list[dict[str, Any]] = []
    for spec in sorted(set(pm.load_drivers().values()), key=lambda s: s.name):
        try:
            doctor = getattr(load_factory(spec), "doctor", None)
            found = list(doctor()) if doctor is not None else []
        except Exception as exc:  # a broken check is a finding of the doctor, not a crash of it
            checks.append({"key": f"{spec.name}_driver", "label": f"{spec.name} load driver", "value": None,
                           "text": f"check failed ({type(exc).__name__}: {exc})"})
            continue
        checks += [{"key": c.key, "label": c.label, "value": c.value, "text": c.text} for c in found]
    return checks


def _install_hint() -> str:
    """``pip install "llamatelemetry-core[EXTRA]"`` with the extras the installed core declares."""
    from importlib import metadata

    try:
        extras = [e for e in metadata.metadata("llamatelemetry-core").get_all("Provides-Extra") or [] if e != "all"]
    except metadata.PackageNotFoundError:
        extras = []
    return 'pip install "llamatelemetry-core[EXTRA]"' + (f", EXTRA one of {', '.join(extras)}" if extras else "")


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
    gpu_module = True
    try:
        import importlib.util

        gpu_module = importlib.util.find_spec("llamatelemetry.gpu") is not None
    except (ImportError, ValueError):
        gpu_module = False
    telemetry = {name: os.environ[name] for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                                                     "OTEL_SERVICE_NAME", "LLAMATELEMETRY_PLUGINS",
                                                     "LLAMATELEMETRY_DISABLE_PLUGINS") if name in os.environ}
    info: dict[str, Any] = {
        "llamatelemetry": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_info(), "libraries": library_versions(),
        "gpu": _with_compute_capability(gpu_environment()) if gpu_module else None, "gpu_module": gpu_module,
        "plugins": plugins, "backends": backends, "load_drivers": sorted({s.name for s in pm.load_drivers().values()}),
        "conflicts": pm.conflicts(), "environment": telemetry,
    }
    # What plugins would put on the resource (the platform, a Kaggle notebook's run type and GPUs, a
    # rank): the hook's contract is local look-ups and no secrets, so it can be shown as is.
    try:
        from llamatelemetry.config import resolve_settings

        info["resource_attributes"] = pm.resource_attributes(resolve_settings())
    except Exception as exc:  # a bad OTEL_* variable is a finding of the doctor, not a crash of it
        info["resource_attributes"] = {}
        info["resource_attributes_error"] = f"{type(exc).__name__}: {exc}"
    checks = _doctor_checks(pm)
    for check in checks:
        # Each check's value also sits at the top level under its key (``llama_cpp_server_kinds``), unless taken.
        info.setdefault(check["key"], check["value"])
    info["checks"] = checks
    return info


def _with_compute_capability(gpu: dict[str, Any] | None) -> dict[str, Any] | None:
    """Each listed GPU with its compute capability as CUDA writes it ("7.5"; None where NVML cannot say)."""
    if not gpu:
        return gpu
    from llamatelemetry.gpu import list_devices

    # The bench fingerprint keeps scalar fields only, so the (major, minor) pair is added here as text.
    capabilities = {device.index: device.compute_capability_text for device in list_devices()}
    for device in gpu.get("details", []):
        device["compute_capability"] = capabilities.get(device.get("index"))
    return gpu


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
            capability = device.get("compute_capability")
            print(f"  [{device.get('index')}] {device.get('name')}"
                  + (f", compute capability {capability}" if capability else ""))
        print(f"  driver {gpu.get('driver_version')}, CUDA {gpu.get('cuda_version')}")
    print("\nplugins")
    for plugin in info["plugins"]:
        failed = plugin["error"] and plugin["status"] != "loaded"
        status = plugin["status"] + (f" ({plugin['error']})" if failed else "")
        print(f"  {plugin['name']:<28} {plugin['distribution'] or '-'} {plugin['version'] or '-'}  {status}")
    for conflict in info["conflicts"]:
        print(f"  conflict: {conflict}")
    print("\nbackends: " + (", ".join(info["backends"]) or f"none (install a plugin: {_install_hint()})"))
    print("load drivers: " + (", ".join(info["load_drivers"]) or "none (every backend runs through its engine)"))
    for check in info["checks"]:
        print(f"{check['label']}: {check['text']}")
    if info["resource_attributes"]:
        print("\nresource attributes from plugins")
        for name, value in sorted(info["resource_attributes"].items()):
            print(f"  {name} = {', '.join(map(str, value)) if isinstance(value, list | tuple) else value}")
    if info.get("resource_attributes_error"):
        print(f"\nresource attributes: not read ({info['resource_attributes_error']})")
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
    doctor = subparsers.add_parser("doctor", help="report the environment, GPUs, plugins, backends and driver checks")
    doctor.add_argument("--json", action="store_true", help="print JSON instead of text")
    doctor.set_defaults(handler=_doctor)
