"""The benchmark harness's own overhead per request: client-side CPU time not spent waiting on the server.

Against a real llama.cpp server (xllamacpp) on the tiny generated model, the same load (4
concurrent streams, 64 requests of 64 tokens, per-token timings on) is driven three ways, and the
CPU time of this process (``time.process_time``: every thread, never the server's) is divided by
the requests and by the chunks:

1. bare: a minimal asyncio httpx SSE reader that parses each event, with no bookkeeping;
2. the harness without polling ``/slots`` (the part of its cost that scales with test time, not requests);
3. the harness, telemetry off: ``BenchmarkRunner.run`` (the llama.cpp plugin's load driver over
   its client, per-chunk timestamps, the core's records, summary, report);
4. the harness, telemetry on: the same with real SDK providers (a span per request and the
   client's span and metrics), exporting nowhere slow.

The overhead is a harness row minus (1): what the harness adds to the client's CPU per request,
time it does not spend waiting on the server. Runs alternate so drift hits every variant; each
figure is the median of the rounds. Run with ``python benchmarks/perf_bench.py`` (or nox -s perf).
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONCURRENCY = 4
REQUESTS = 64
TOKENS = 64
ROUNDS = 3
PROMPT = "Tell me a story about the moon."


async def _bare_load(url: str) -> int:
    """The least a streaming client must do: send, read SSE lines, parse each event. Returns chunks seen."""
    import httpx

    payload = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS, "stream": True,
               "stream_options": {"include_usage": True}, "timings_per_token": True, "ignore_eos": True,
               "cache_prompt": False, "temperature": 0.0}
    chunks = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        work = iter(range(REQUESTS))

        async def stream_worker() -> None:
            nonlocal chunks
            for index in work:
                # Connection: close, as LlamaCppClient sends it: llama.cpp's server closes each streamed
                # connection anyway, and one reused before that close arrived would fail the request.
                async with client.stream("POST", "/v1/chat/completions", json={**payload, "seed": index},
                                         headers={"Connection": "close"}) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:") and line[5:].strip() != "[DONE]":
                            json.loads(line[5:])
                            chunks += 1

        await asyncio.gather(*(stream_worker() for _ in range(CONCURRENCY)))
    return chunks


def bare(url: str) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, chunks) of the bare client."""
    cpu, wall = time.process_time(), time.perf_counter()
    chunks = asyncio.run(_bare_load(url))
    return time.process_time() - cpu, time.perf_counter() - wall, chunks


def harness(url: str, prompts: list[Any], *, poll_slots: bool = True) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, output chunks) of one BenchmarkRunner run."""
    from llamatelemetry.bench import BenchmarkRunner

    # poll_slots is an option of the llama.cpp load driver (the plugin's), not of the core's harness.
    runner = BenchmarkRunner(gpu_monitor=None, driver_options={"poll_slots": poll_slots})
    config = runner.config(llama_server_url=url, prompts=prompts, n_tokens=TOKENS, concurrency=CONCURRENCY,
                           num_requests=REQUESTS, warmup=0, hash_model=False)
    cpu, wall = time.process_time(), time.perf_counter()
    report = runner.run_config(config, prompts)
    elapsed_cpu, elapsed_wall = time.process_time() - cpu, time.perf_counter() - wall
    test = report.tests[0]
    assert test.summary.completed == REQUESTS, test.summary.errors
    return elapsed_cpu, elapsed_wall, sum(r.chunks for r in test.requests)


def main() -> int:
    import llamatelemetry
    from llamatelemetry.bench import Prompt
    from llamatelemetry_llamacpp.server import ServerManager
    from llamatelemetry_llamacpp.testing import write_tiny_gguf

    workdir = Path(tempfile.mkdtemp(prefix="perf-bench-"))
    model = write_tiny_gguf(workdir / "tiny.gguf", seed=0, n_ctx_train=2048)
    prompts = [Prompt.of(PROMPT, id="story")]

    def telemetry_on() -> None:
        llamatelemetry.init(service_name="perf-bench", traces_exporter="none", metrics_exporter="none",
                            use_existing_providers=False, set_global_providers=False)

    variants: dict[str, tuple[Callable[[], None], Callable[[str], tuple[float, float, int]]]] = {
        "bare httpx SSE client": (llamatelemetry.shutdown, bare),
        "harness, no /slots polling": (llamatelemetry.shutdown, lambda url: harness(url, prompts, poll_slots=False)),
        "harness, telemetry off": (llamatelemetry.shutdown, lambda url: harness(url, prompts)),
        "harness, telemetry on": (telemetry_on, lambda url: harness(url, prompts)),
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    with ServerManager(log_dir=workdir) as server:
        # One thread: llama.cpp's spinning thread pool beside this client on a 2-core machine made a token
        # take 50-120 ms instead of 0.7 (and the server dropped connections); a single-threaded tiny model never does.
        server.start_server(model, gpu_layers=0, ctx_size=4096, port=None, n_parallel=CONCURRENCY, threads=1)
        bare(server.base_url)  # warm the server's slots and this process's imports
        harness(server.base_url, prompts)
        for _ in range(ROUNDS):
            for name, (prepare, run) in variants.items():
                prepare()
                results[name].append(run(server.base_url))
                llamatelemetry.shutdown()
        server.stop_server()

    print(f"benchmark harness overhead (python {platform.python_version()}, {CONCURRENCY} streams, "
          f"{REQUESTS} requests x {TOKENS} tokens, median of {ROUNDS} rounds)\n")
    header = f"{'variant':<28} {'CPU/request':>12} {'CPU/chunk':>10} {'overhead/request':>17} {'wall s':>8}"
    print(header)
    print("-" * len(header))
    base_per_request = statistics.median(cpu for cpu, _, _ in results["bare httpx SSE client"]) / REQUESTS
    for name, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        chunks = statistics.median(r[2] for r in runs)
        per_request = cpu / REQUESTS
        overhead = "-" if name.startswith("bare") else f"{(per_request - base_per_request) * 1e6:,.0f} us"
        print(f"{name:<28} {per_request * 1e6:>9,.0f} us {cpu / chunks * 1e6:>7,.1f} us {overhead:>17} {wall:>8.2f}")
    print("\nCPU is this process's (all threads), never the server's: the harness's cost while the server works.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
