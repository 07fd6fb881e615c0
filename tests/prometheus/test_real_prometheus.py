"""A real Prometheus (Debian's package) scrapes init(prometheus_port=...) during a real llama.cpp run.

One run per module: llama.cpp's own server (xllamacpp) on the tiny GGUF, read through the engine,
the streaming client (with one request too long for the context, an error) and the metrics
bridge, plus in-process llama.cpp (llama-cpp-python); two rounds with a scrape after each, so
every counter and histogram has a rate. The dashboard's panels are then queried as Grafana would.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

pytest.importorskip("opentelemetry.exporter.prometheus", reason='pip install "llamatelemetry-core[prometheus]"')
pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python")

from metric_names import (
    LLAMACPP_COUNTERS,
    documented_prometheus_names,
    expand,
    load_dashboard,
    prometheus_names,
    query_panels,
)
from prometheus_server import PrometheusServer, prometheus_binary, running_prometheus

SERVICE = "llamatelemetry-prometheus-test"
PROMPT = [{"role": "user", "content": "Count to three."}]

#: Panels with no data source on a CPU machine: NVML's GPU sampler and the NCCL plugin's collectives.
GPU_OR_NCCL_PANELS = frozenset({
    "GPU utilization", "GPU memory", "GPU power", "Energy per output token", "GPU temperature",
    "Collective bus bandwidth", "Collective data moved", "Collective duration and arrival skew",
})
#: Queries of CPU panels that may stay empty in this run, and why (the panel's other query has data).
MAY_BE_EMPTY = {
    ("KV cache usage", "A"): "xllamacpp's llama.cpp build exports no llamacpp:kv_cache_usage_ratio (builds differ)",
    ("Telemetry export", "C"): "llamatelemetry.export.dropped has series only once something was dropped",
}


@attrs.frozen
class Run:
    """What the module's run left: the Prometheus holding it, when to query, and what the client counted."""

    prometheus: PrometheusServer
    at: float
    output_tokens: int
    requests: int
    our_series: frozenset[str]


def _scrape_ourselves(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _total(text: str, name: str) -> float:
    """Sum of one series name's samples in exposition text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Run]:
    """The real run, scraped by a real Prometheus, which keeps running for the module's queries."""
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed: apt-get install --no-install-recommends prometheus")
    import llamatelemetry
    from llamatelemetry.inference import InferenceRequest, SamplingParams, create_engine
    from llamatelemetry_llamacpp.client import LlamaCppClient
    from llamatelemetry_llamacpp.errors import ContextSizeExceededError
    from llamatelemetry_llamacpp.metrics_bridge import LlamaCppServerMetrics
    from llamatelemetry_llamacpp.testing import running_server

    workdir = tmp_path_factory.mktemp("prometheus")
    llamatelemetry.shutdown()
    telemetry = llamatelemetry.init(service_name=SERVICE, prometheus_port=0, prometheus_host="127.0.0.1",
                                    traces_exporter="none", use_existing_providers=False)
    assert telemetry.prometheus is not None
    url = telemetry.prometheus.url
    request = InferenceRequest(messages=PROMPT, max_tokens=6, sampling=SamplingParams(temperature=0.0, seed=1))
    output_tokens = requests = 0
    try:
        with running_prometheus(workdir, [f"127.0.0.1:{telemetry.prometheus.port}"]) as prometheus, \
                running_server(tiny_gguf, ctx_size=256, n_parallel=2, threads=1, log_dir=workdir) as server, \
                create_engine("llama.cpp", llama_server_url=server.base_url) as over_http, \
                create_engine("llama.cpp", model_path=tiny_gguf, n_ctx=256, n_threads=1) as in_process, \
                LlamaCppClient(server.base_url) as client:
            bridge = LlamaCppServerMetrics(client)
            try:
                for _ in range(2):
                    for engine in (over_http, in_process):
                        output_tokens += engine.generate(request).output_tokens or 0
                        requests += 1
                    for _chunk in client.chat.create(messages=PROMPT, max_tokens=6, stream=True):
                        pass
                    requests += 1
                    with pytest.raises(ContextSizeExceededError):
                        client.chat.create(messages=[{"role": "user", "content": "word " * 400}], max_tokens=4)
                    requests += 1
                    # Wait for a scrape that saw this round, so the next round's increase is a rate.
                    expected = _total(_scrape_ourselves(url), "gen_ai_client_operation_duration_seconds_count")
                    prometheus.wait_for(
                        f'sum(gen_ai_client_operation_duration_seconds_count{{service_name="{SERVICE}"}})',
                        lambda r, n=expected: bool(r) and float(r[0]["value"][1]) >= n)
                at = time.time()
                time.sleep(0.5)  # one more scrape: the bridge's last collection, after everything finished
                at = time.time()
                our_series = frozenset(prometheus.series_names())
            finally:
                bridge.stop()
            llamatelemetry.shutdown()
            yield Run(prometheus, at, output_tokens, requests, our_series)
    finally:
        llamatelemetry.shutdown()


def _value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_prometheus_answers_for_our_metrics_by_their_prometheus_names(run: Run) -> None:
    """_seconds_bucket histograms, {token} without a suffix, _total counters: with the values we recorded."""
    prom, sel = run.prometheus, f'service_name="{SERVICE}"'
    at = str(run.at)
    counts = prom.api("query", query=f"sum(gen_ai_client_operation_duration_seconds_count{{{sel}}})", time=at)
    assert float(counts["result"][0]["value"][1]) == run.requests
    output = prom.api("query", query=f'sum(gen_ai_client_token_usage_sum{{{sel}, gen_ai_token_type="output"}})',
                      time=at)["result"]
    # The engines' results count output tokens; the streamed request's add to it.
    assert float(output[0]["value"][1]) >= run.output_tokens > 0
    for name in ("gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
                 "gen_ai_client_operation_time_per_output_chunk_seconds_bucket",
                 "gen_ai_server_time_to_first_token_seconds_bucket",
                 "gen_ai_server_time_per_output_token_seconds_bucket",
                 "llamatelemetry_llama_cpp_decode_duration_seconds_bucket"):
        buckets = prom.api("query", query=f"{name}{{{sel}}}", time=at)["result"]
        assert {b["metric"]["le"] for b in buckets} >= {"+Inf"}, name
    errors = prom.api("query", query=f'sum by (error_type) (gen_ai_client_operation_duration_seconds_count'
                                     f'{{{sel}, error_type!=""}})', time=at)["result"]
    assert [float(e["value"][1]) for e in errors] == [2.0], errors
    assert errors[0]["metric"]["error_type"].endswith(".ContextSizeExceededError"), errors
    prompt_tokens = prom.api("query", query=f"llamatelemetry_llama_cpp_server_prompt_tokens_total{{{sel}}}",
                             time=at)["result"]
    assert prompt_tokens and float(prompt_tokens[0]["value"][1]) > 0
    assert prompt_tokens[0]["metric"]["job"] == "llamatelemetry"


def test_everything_prometheus_holds_from_us_is_documented(run: Run) -> None:
    """Every series name scraped from us is a documented metric as Prometheus renames it, and the names match."""
    ours = {n for n in run.our_series if not n.startswith(("scrape_", "up", "target_info"))}
    documented = documented_prometheus_names()
    assert ours - documented == set(), "scraped, but not documented in docs/reference/telemetry.md (as renamed)"
    assert {"gen_ai_client_token_usage_bucket", "gen_ai_server_request_duration_seconds_count",
            "llamatelemetry_llama_cpp_server_slots_busy", "llamatelemetry_telemetry_spans_exported_total"} <= ours
    # The bridge's counters are the families llama.cpp types as counters (the test table is right).
    bridged = {n.removeprefix("llamatelemetry_llama_cpp_server_") for n in ours
               if n.startswith("llamatelemetry_llama_cpp_server_") and n.endswith("_total")} - {"slots_total"}
    assert bridged and {b.removesuffix("_total") for b in bridged} <= LLAMACPP_COUNTERS
    assert prometheus_names("hw.energy", "J", "counter") == ("hw_energy_joules_total",)


def test_every_cpu_panel_of_the_dashboard_returns_data(run: Run) -> None:
    """Each panel's queries, as Grafana sends them for "All", return finite values (GPU/NCCL panels excepted)."""
    panels = query_panels(load_dashboard())
    titles = {p["title"] for p in panels}
    assert titles >= GPU_OR_NCCL_PANELS, "the exception list names panels that do not exist"
    assert {title for title, _ in MAY_BE_EMPTY} <= titles
    empty = []
    for panel in panels:
        if panel["title"] in GPU_OR_NCCL_PANELS:
            continue
        with_data = 0
        for target in panel["targets"]:
            result = run.prometheus.api("query", query=expand(target["expr"]), time=str(run.at))["result"]
            values = [float(r["value"][1]) for r in result]
            if values and all(math.isfinite(v) for v in values):
                with_data += 1
            elif (panel["title"], target["refId"]) not in MAY_BE_EMPTY:
                empty.append(f"{panel['title']} [{target['refId']}]: {target['expr']} -> {result}")
        assert with_data, f"panel {panel['title']!r} shows nothing"
    assert empty == []
