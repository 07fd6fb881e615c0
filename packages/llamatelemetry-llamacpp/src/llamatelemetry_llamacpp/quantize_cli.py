"""``llamatelemetry quantize``: a GGUF file or a Hugging Face model folder to a quantized GGUF, traced.

    llamatelemetry quantize model-f16.gguf -q Q4_K_M -o model-q4_k_m.gguf
    llamatelemetry quantize ./my-hf-model -q Q4_K_M -o model-q4_k_m.gguf   # export to F16 first, then quantize
    llamatelemetry quantize ./my-hf-model --outtype f16 -o model-f16.gguf   # export only
    llamatelemetry quantize --list-types

It prints what it did: the sizes before and after, bits per weight, the tensors by type, the weights
that fell back to another type, and the time. A bad input (a missing file or folder, an unknown
type, an architecture the exporter does not know, a full disk) is a one-line error and exit status
1, with nothing left at the output path. With ``--otlp-endpoint`` (or the standard OTLP variables)
the stage spans are exported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

_EXIT_ERROR = 1


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``quantize`` on the ``llamatelemetry`` command line."""
    parser = subparsers.add_parser(
        "quantize", help="quantize a GGUF file or a Hugging Face model folder to a GGUF type (Q4_K_M, Q8_0, ...)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", type=Path, help="a .gguf file, or a Hugging Face model folder")
    parser.add_argument("-q", "--quant-type", help="the GGUF type to make: Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, ...")
    parser.add_argument("-o", "--output", type=Path, help="the .gguf file to write (default: beside the input)")
    parser.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"],
                        help="export a model folder to this type; alone, export only (no quantization)")
    parser.add_argument("--engine", choices=["auto", "llama.cpp", "gguf-py"], default="auto",
                        help="the quantizer: llama.cpp's (llama-cpp-python) or the gguf package's (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="quantizer threads (default 0: all cores)")
    parser.add_argument("--keep-intermediate", action="store_true",
                        help="keep the exported F16 GGUF when quantizing a model folder")
    parser.add_argument("--converter", type=Path,
                        help="llama.cpp's convert_hf_to_gguf.py (or a llama.cpp checkout) for the export")
    parser.add_argument("--list-types", action="store_true", help="list the GGUF types this machine can make")
    parser.add_argument("--otlp-endpoint", help="export the stage spans over OTLP (e.g. http://localhost:4317)")
    parser.set_defaults(handler=run)


def _error(message: str) -> int:
    print(f"llamatelemetry quantize: error: {message}", file=sys.stderr)
    return _EXIT_ERROR


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:,.2f} MiB"


@contextlib.contextmanager
def _telemetry(endpoint: str | None) -> Iterator[None]:
    """Telemetry for the run when asked for (the flag or the standard OTLP variables); none otherwise."""
    if not (endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        yield
        return
    import llamatelemetry

    options: dict[str, Any] = {"service_name": "llamatelemetry-quantize"}
    if endpoint:
        options["otlp_endpoint"] = endpoint
    telemetry = llamatelemetry.init(**options)
    try:
        yield
    finally:
        telemetry.force_flush()
        llamatelemetry.shutdown()


def _report(result: Any, source: Path, what: str) -> None:
    ratio = result.compression_ratio
    print(f"{what} {source} -> {result.output_path} ({result.quant_type}, {result.engine or result.method}) "
          f"in {result.duration_s or 0.0:.2f} s")
    print(f"  size: {_mib(result.size_before_bytes)} -> {_mib(result.size_after_bytes)}"
          + (f" ({ratio:.2f}x smaller)" if ratio else ""))
    if result.bits_per_weight is not None:
        print(f"  bits per weight: {result.bits_per_weight:.2f}")
    if result.tensor_types:
        print("  tensors: " + ", ".join(f"{kind} {count}" for kind, count in result.tensor_types.items()))
    if result.method == "gguf":
        if result.fallback_tensors:
            shown = ", ".join(result.fallback_tensors[:6]) + (" ..." if len(result.fallback_tensors) > 6 else "")
            print(f"  fallbacks: {result.fallback_count} of {result.n_tensors} tensors are stored in another type "
                  f"than {result.quant_type}: their rows are not a multiple of its block (K-quants need 256): {shown}")
        else:
            print("  fallbacks: none")
    if result.intermediate_path:
        print(f"  kept the exported file: {result.intermediate_path}")


def run(args: argparse.Namespace) -> int:
    """Run ``llamatelemetry quantize``; returns the exit status."""
    from llamatelemetry.errors import LlamaTelemetryError
    from llamatelemetry_llamacpp.quantize import supported_types

    try:
        if args.list_types:
            print(" ".join(supported_types()))
            return 0
        if args.model is None:
            return _error("give a .gguf file or a model folder (llamatelemetry quantize MODEL -q Q4_K_M -o out.gguf)")
        if args.quant_type is None and args.outtype is None:
            return _error("give -q/--quant-type (a GGUF type such as Q4_K_M) or --outtype (export only)")
        options: dict[str, Any] = {}
        if args.converter is not None:
            options["converter"] = args.converter
        with _telemetry(args.otlp_endpoint):
            if args.quant_type is None:
                return _export_only(args, options)
            from llamatelemetry_llamacpp.quantize import quantize_gguf

            result = quantize_gguf(args.model, args.output, quant_type=args.quant_type, engine=args.engine,
                                   nthread=args.threads, keep_intermediate=args.keep_intermediate,
                                   outtype=args.outtype or "f16", **options)
        _report(result, args.model, "quantized")
        return 0
    except (LlamaTelemetryError, OSError, ValueError, TypeError, ImportError) as exc:
        return _error(str(exc) or type(exc).__name__)


def _export_only(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from llamatelemetry.quantization.gguf import convert_to_gguf
    from llamatelemetry_llamacpp.quantize import QuantizeInputError

    folder = Path(args.model)
    if not folder.is_dir():
        reason = "it is a file; --outtype exports a Hugging Face model folder" if folder.exists() else \
            "no such folder"
        raise QuantizeInputError(str(folder), reason, "Give a model folder written by save_pretrained, or quantize a "
                                                      ".gguf file with -q.")
    result = convert_to_gguf(folder, args.output, outtype=args.outtype, **options)
    _report(result, folder, "exported")
    return 0
