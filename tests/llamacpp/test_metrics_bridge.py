"""LlamaCppServerMetrics: a real llama.cpp server's /metrics and /slots as OpenTelemetry instruments."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.semconv import gen_ai
from llamatelemetry.testing import InMemoryTelemetry

pytest.importorskip("httpx")

from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.client import AsyncLlamaCppClient, LlamaCppClient
from llamatelemetry_llamacpp.errors import ServerUnavailableError
from llamatelemetry_llamacpp.metrics_bridge import (
    LlamaCppServerMetrics,
    instrument_name,
    parse_prometheus_text,
)

PREFIX = names.SERVER_METRIC_PREFIX


def _collect(t: InMemoryTelemetry) -> dict[str, Any]:
    """One collection: the bridged metrics by name (the OTel Metric objects)."""
    assert t.reader is not None
    data = t.reader.get_metrics_data()
    found: dict[str, Any] = {}
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name.startswith(PREFIX):
                    found[metric.name] = metric
    return found


def _value(metric: Any) -> float:
    (point,) = metric.data.data_points
    return float(point.value)


@pytest.fixture
def client(llama_server: Any) -> Iterator[LlamaCppClient]:
    """A client of the session's llama.cpp server."""
    with LlamaCppClient(llama_server.base_url) as c:
        yield c


def test_parse_prometheus_text() -> None:
    """Types, help, labels (with escapes) and values; bad lines and NaN samples are skipped."""
    families = parse_prometheus_text(
        '# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed\n'
        '# TYPE llamacpp:prompt_tokens_total counter\n'
        'llamacpp:prompt_tokens_total 42\n'
        '# TYPE llamacpp:kv_cache_usage_ratio gauge\n'
        'llamacpp:kv_cache_usage_ratio{slot="0",model="a \\"b\\""} 0.25 1700000000000\n'
        'llamacpp:kv_cache_usage_ratio{slot="1"} NaN\n'
        'llamacpp:untyped_thing +Inf\n'
        'this line is garbage\n'
    )
    tokens = families["llamacpp:prompt_tokens_total"]
    assert (tokens.type, tokens.help) == ("counter", "Number of prompt tokens processed")
    assert [(s.labels, s.value) for s in tokens.samples] == [({}, 42.0)]
    (usage,) = families["llamacpp:kv_cache_usage_ratio"].samples
    assert usage.labels == {"slot": "0", "model": 'a "b"'} and usage.value == 0.25
    assert families["llamacpp:untyped_thing"].type == "untyped"
    assert instrument_name(tokens) == PREFIX + "prompt_tokens"
    assert instrument_name(families["llamacpp:kv_cache_usage_ratio"]) == PREFIX + "kv_cache_usage_ratio"


def test_bridge_mirrors_the_servers_metrics(client: LlamaCppClient, llama_server: Any) -> None:
    """Every llamacpp:* family becomes an instrument of the right kind, with the server's values."""
    client.chat.create(messages=[{"role": "user", "content": "Say hello."}], max_tokens=3)
    with InMemoryTelemetry() as t:
        bridge = LlamaCppServerMetrics(client)
        exposed = {instrument_name(f) for f in parse_prometheus_text(client.metrics_text()).values()
                   if f.name.startswith("llamacpp:")}
        assert set(bridge.instrument_names) == exposed | {names.METRIC_SERVER_SLOTS_BUSY,
                                                          names.METRIC_SERVER_SLOTS_TOTAL}
        metrics = _collect(t)
        after = parse_prometheus_text(client.metrics_text())
    assert set(metrics) == set(bridge.instrument_names)

    predicted = metrics[PREFIX + "tokens_predicted"]
    assert type(predicted.data).__name__ == "Sum" and predicted.data.is_monotonic
    assert predicted.unit == "{token}" and predicted.description == "Number of generation tokens processed"
    assert _value(predicted) == after["llamacpp:tokens_predicted_total"].samples[0].value >= 3
    assert type(metrics[PREFIX + "requests_processing"].data).__name__ == "Gauge"
    assert type(metrics[PREFIX + "prompt_seconds"].data).__name__ == "Sum"
    assert metrics[PREFIX + "prompt_seconds"].unit == "s"

    assert _value(metrics[names.METRIC_SERVER_SLOTS_TOTAL]) == len(client.slots()) == 2
    assert 0 <= _value(metrics[names.METRIC_SERVER_SLOTS_BUSY]) <= 2
    (point,) = metrics[names.METRIC_SERVER_SLOTS_BUSY].data.data_points
    host, port = llama_server.base_url.removeprefix("http://").split(":")
    assert dict(point.attributes) == {gen_ai.SERVER_ADDRESS: host, gen_ai.SERVER_PORT: int(port)}


def test_one_scrape_per_collection(llama_server: Any) -> None:
    """All the callbacks of one collection share one /metrics request."""
    with InMemoryTelemetry() as t, LlamaCppServerMetrics(llama_server.base_url) as bridge:
        assert len(bridge.instrument_names) > 5
        before = bridge.scrape_count
        assert len(_collect(t)) == len(bridge.instrument_names)
        assert bridge.scrape_count == before + 1
        _collect(t)
        assert bridge.scrape_count == before + 2


def test_stop_and_no_slots(llama_server: Any) -> None:
    """include_slots=False leaves the slots out; after stop() nothing is observed."""
    with InMemoryTelemetry() as t:
        bridge = LlamaCppServerMetrics(llama_server.base_url, include_slots=False)
        assert names.METRIC_SERVER_SLOTS_BUSY not in bridge.instrument_names
        assert _collect(t)
        bridge.stop()
        count = bridge.scrape_count
        assert _collect(t) == {}
        assert bridge.scrape_count == count
        assert "stopped" in repr(bridge)


def test_bridge_needs_a_server() -> None:
    """No server: a clear error at construction; an async client is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnavailableError, match=r"Cannot reach the llama\.cpp server"):
        LlamaCppServerMetrics(f"http://127.0.0.1:{port}")
    with pytest.raises(TypeError, match="AsyncLlamaCppClient"):
        LlamaCppServerMetrics(AsyncLlamaCppClient(f"http://127.0.0.1:{port}"))  # type: ignore[arg-type]


def test_server_without_metrics_then_gone(smollm2_gguf: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A server without --metrics bridges its slots only; once it is gone, scrapes log once and observe nothing."""
    pytest.importorskip("xllamacpp")
    from llamatelemetry_llamacpp.server import ServerManager

    manager = ServerManager(log_dir=tmp_path)
    manager.start_server(smollm2_gguf, gpu_layers=0, ctx_size=256, port=None, n_parallel=1, threads=1,
                         flash_attn=False, metrics=False, slots=True, warmup=False)
    caplog.set_level(logging.WARNING, logger="llamatelemetry.llama_cpp")
    try:
        with InMemoryTelemetry() as t:
            bridge = LlamaCppServerMetrics(manager.base_url)
            assert "--metrics" in caplog.text
            assert bridge.instrument_names == [names.METRIC_SERVER_SLOTS_BUSY, names.METRIC_SERVER_SLOTS_TOTAL]
            assert _value(_collect(t)[names.METRIC_SERVER_SLOTS_TOTAL]) == 1
            manager.stop_server()
            caplog.clear()
            assert _collect(t) == {}
            assert _collect(t) == {}
            failures = [r for r in caplog.records if "failed" in r.getMessage()]
            assert len(failures) == 1 and "/slots" in failures[0].getMessage()
            bridge.stop()
    finally:
        manager.stop_server()
