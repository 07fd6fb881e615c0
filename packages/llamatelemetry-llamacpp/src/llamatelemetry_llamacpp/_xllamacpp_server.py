"""Run llama.cpp's embedded C++ server (xllamacpp) as its own process, with llama-server's flags.

``ServerManager`` starts this module with ``python -m``: the server then lives in a child process
that a crash cannot take the caller down with, and that stops on SIGTERM like llama-server.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llamatelemetry_llamacpp._xllamacpp_server")
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    parser.add_argument("-ts", "--tensor-split", default="")
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("-b", "--batch-size", type=int, default=512)
    parser.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"], default="auto")
    parser.add_argument("-np", "--parallel", type=int, default=1)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("-a", "--alias", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--slots", action="store_true")
    parser.add_argument("--no-warmup", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server, print its address, serve until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_gpu_layers = args.n_gpu_layers
    if args.tensor_split:
        shares = [float(x) for x in args.tensor_split.split(",")]
        split = list(params.tensor_split)
        split[: len(shares)] = shares
        params.tensor_split = split
    params.n_ctx = args.ctx_size
    params.n_batch = args.batch_size
    params.flash_attn_type = {
        "on": xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        "auto": xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_AUTO,
    }[args.flash_attn]
    params.n_parallel = args.parallel
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.alias:
        params.model_alias = {args.alias}
    if args.api_key:
        params.api_keys = [args.api_key]
    params.endpoint_metrics = args.metrics
    params.endpoint_slots = args.slots
    params.warmup = not args.no_warmup

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"llamatelemetry: xllamacpp server listening at {server.listening_address}", flush=True)
    stop.wait()
    del server  # the destructor stops llama.cpp's main loop and HTTP threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
