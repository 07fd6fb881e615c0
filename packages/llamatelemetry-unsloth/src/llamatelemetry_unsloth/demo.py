"""``llamatelemetry pipeline-demo``: fine-tune -> merge -> GGUF -> quantize -> benchmark -> deploy as one trace.

Builds a tiny Llama in code (a tokenizer trained on the spot, 256 wide, 2 layers), LoRA fine-tunes
it until it memorises a sentence, merges, exports to GGUF, quantizes to Q4_K_M, benchmarks the
result with llamatelemetry's bench harness, deploys it on a llama.cpp server and asks it to go on
from the sentence's first words. Prints the trace tree with durations, the artifacts with sizes
and sha256, and the generated text. ``--model DIR`` runs it on your own saved Hugging Face model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from llamatelemetry_unsloth.pipeline import PipelineRun


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``pipeline-demo`` on the ``llamatelemetry`` command line."""
    from llamatelemetry_unsloth.testing import PROMPT, SENTENCE

    parser = subparsers.add_parser(
        "pipeline-demo", help="run the traced fine-tune -> merge -> GGUF -> quantize -> benchmark -> deploy pipeline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="your saved Hugging Face model folder (default: a tiny Llama "
                                                   "built here)")
    parser.add_argument("--workdir", type=Path, help="where to write the files (default: a temporary folder, "
                                                     "removed afterwards unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--sentence", default=SENTENCE, help="what the fine-tune teaches the model")
    parser.add_argument("--prompt", default=PROMPT, help="the words the deployed model continues")
    parser.add_argument("--steps", type=int, default=30, help="LoRA training steps (default 30)")
    parser.add_argument("--quant-type", default="Q4_K_M", help="GGUF type to quantize to (default Q4_K_M)")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers the llama.cpp servers offload to a GPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for training and llama.cpp (default 1)")
    parser.add_argument("--otlp-endpoint", help="also export the trace to this OTLP endpoint")
    parser.set_defaults(handler=run)


def _details(span: ReadableSpan) -> str:
    from llamatelemetry.pipeline import attributes as pnames
    from llamatelemetry_unsloth import semconv as names

    a = dict(span.attributes or {})
    parts: list[str] = []
    if span.status.status_code.name == "ERROR":
        parts.append(f"ERROR {a.get('error.type', '')}".rstrip())
    for key, label, form in (
        (names.LORA_RANK, "r", "{}"), (names.TRAINABLE_PARAMETERS, "trainable", "{:,}"),
        (names.MODEL_PARAMETERS, "params", "{:,}"), (names.STEP, "steps", "{}"), (names.LOSS, "loss", "{:.3f}"),
        (names.TOKENS, "tokens", "{:,}"), (names.MERGED_MODULES, "merged", "{} layers"),
        (pnames.QUANTIZATION_TYPE, "type", "{}"), (pnames.QUANTIZATION_BITS_PER_WEIGHT, "bpw", "{:.2f}"),
        (names.BENCH_TTFT_P50, "ttft p50", "{:.1f} ms"), (names.BENCH_OUTPUT_TPS, "", "{:.0f} tok/s"),
        (names.DEPLOY_HEALTH, "health", "{}"),
        (pnames.OUTPUT_ARTIFACTS_SIZE, "wrote", "{:,} B"),
    ):
        if key in a:
            value = form.format(a[key])
            parts.append(f"{label}={value}" if label else value)
    events = [e for e in span.events if e.name == names.EVENT_LOG_STEP]
    if events:
        parts.append(f"{len(events)} log steps")
    ttfc = a.get("gen_ai.response.time_to_first_chunk")
    if isinstance(ttfc, (int, float)):
        parts.append(f"ttft={ttfc * 1e3:.1f}ms")
    if "gen_ai.usage.output_tokens" in a:
        parts.append(f"out={a['gen_ai.usage.output_tokens']}")
    return " ".join(parts)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"


def _artifact_table(run: PipelineRun) -> list[str]:
    lines = []
    for artifact in run.context.manifest.artifacts:
        try:
            shown = Path(artifact.path).relative_to(run.workdir).as_posix()
        except ValueError:
            shown = artifact.path
        where = f"{artifact.metadata.get('stage', '')} {artifact.metadata.get('role', '')}"
        lines.append(f"  {where:<19} {artifact.kind:<17} {_size(artifact.size_bytes):>9}  "
                     f"sha256 {artifact.sha256[:12]}  {shown}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    if args.steps < 1:
        raise SystemExit("llamatelemetry pipeline-demo: --steps must be at least 1")
    # Before torch is imported: tiny models train fastest on one thread, and a busy machine stays usable.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import llamatelemetry
    from llamatelemetry_unsloth._deps import import_engine

    torch = import_engine("torch", "llamatelemetry pipeline-demo")
    torch.set_num_threads(args.threads)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="llamatelemetry-pipeline-")) if temporary else args.workdir
    shown = InMemorySpanExporter()
    options: dict[str, Any] = {"service_name": "llamatelemetry-pipeline-demo", "use_existing_providers": False,
                               "span_processors": [SimpleSpanProcessor(shown)], "metrics_exporter": "none"}
    if args.otlp_endpoint:
        options["otlp_endpoint"] = args.otlp_endpoint
    else:
        options["traces_exporter"] = "none"
    telemetry = llamatelemetry.init(**options)
    try:
        return _run_and_print(args, workdir, shown, telemetry)
    finally:  # telemetry, its instrumentation and a temporary workdir end with the command, whatever happened
        llamatelemetry.shutdown()
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif temporary:
            print(f"files kept in {workdir}")


def _run_and_print(args: argparse.Namespace, workdir: Path, shown: Any, telemetry: Any) -> int:
    from llamatelemetry.errors import LlamaTelemetryError
    from llamatelemetry.otel.summary import render_span_tree
    from llamatelemetry_unsloth.errors import UnslothPluginError
    from llamatelemetry_unsloth.pipeline import run_pipeline

    try:
        result = run_pipeline(workdir, model_dir=args.model, sentence=args.sentence, prompt=args.prompt,
                              steps=args.steps, quant_type=args.quant_type, gpu_layers=args.gpu_layers,
                              threads=args.threads,
                              on_stage=lambda name: print(f"... {name}", file=sys.stderr, flush=True))
    except (UnslothPluginError, LlamaTelemetryError, FileNotFoundError, ValueError, OSError, ImportError,
            RuntimeError) as exc:
        telemetry.force_flush()
        print(render_span_tree(shown.get_finished_spans(), details=_details, width=56), file=sys.stderr)
        print(f"\nllamatelemetry pipeline-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        telemetry.force_flush()
    spans = shown.get_finished_spans()
    print(f"pipeline {result.context.pipeline_id} ({result.context.base_model}, {args.quant_type})\n")
    print("trace:")
    print(render_span_tree(spans, details=_details, width=56))
    print("\nartifacts (manifest: " + str(result.manifest_path) + "):")
    print("\n".join(_artifact_table(result)))
    print("\ngenerated by the deployed server:")
    print(f"  {result.prompt} ▸ {result.generated_text.strip()}")
    continuation = args.sentence.removeprefix(args.prompt).strip()
    remembered = bool(continuation) and continuation.split()[0] in result.generated_text
    full = f"{result.prompt} {result.generated_text.strip()}"
    print(f"\nthe fine-tuned sentence survived every stage: {'yes' if args.sentence in full else 'no'}"
          + ("" if args.sentence in full else f" (first word {'found' if remembered else 'not found'})"))
    return 0 if args.sentence in full or args.model is not None else 3
