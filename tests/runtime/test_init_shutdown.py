"""init() and shutdown(): exporters, flushing, existing providers, export hooks, drop counting."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamatelemetry
from llamatelemetry.otel.export import QueueingSpanProcessor
from llamatelemetry.otel.exporters import build_otlp_exporter
from llamatelemetry.plugins import hookimpl
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_file_output_gets_spans_and_metrics_at_shutdown(tmp_path: Path) -> None:
    out = tmp_path / "telemetry" / "run.jsonl"
    telemetry = llamatelemetry.init(service_name="file-test", output_file=out)

    @llamatelemetry.trace(attributes={"step": 1})
    def work() -> int:
        return 42

    assert work() == 42
    llamatelemetry.shutdown()
    records = _read_jsonl(out)
    spans = [r for r in records if r["signal"] == "span"]
    assert [s["name"] for s in spans] == [work.__qualname__]
    assert spans[0]["attributes"]["step"] == 1
    assert spans[0]["resource"]["attributes"]["service.name"] == "file-test"
    metric_names = {m["name"] for r in records if r["signal"] == "metrics"
                    for rm in r["resource_metrics"] for sm in rm["scope_metrics"] for m in sm["metrics"]}
    assert "llamatelemetry.telemetry.spans.exported" in metric_names
    assert telemetry.is_shut_down


def test_console_output_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    llamatelemetry.init(service_name="console-test")
    with llamatelemetry.span("visible in the console"):
        pass
    llamatelemetry.shutdown()
    err = capsys.readouterr().err
    assert "[llamatelemetry] span 'visible in the console'" in err


def test_shutdown_is_idempotent_and_init_twice_keeps_the_first(caplog: pytest.LogCaptureFixture,
                                                             tmp_path: Path) -> None:
    first = llamatelemetry.init(service_name="a", output_file=tmp_path / "a.jsonl")
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        second = llamatelemetry.init(service_name="b")
    assert second is first
    assert "called again" in caplog.text
    llamatelemetry.shutdown()
    llamatelemetry.shutdown()
    first.shutdown()
    assert llamatelemetry.current() is None
    third = llamatelemetry.init(service_name="c", traces_exporter="none", metrics_exporter="none")
    assert third is not first and third.settings.service_name == "c"


def test_sdk_disabled_records_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    out = tmp_path / "none.jsonl"
    telemetry = llamatelemetry.init(service_name="off", output_file=out)
    with llamatelemetry.span("nothing") as span:
        assert not span.is_recording()
    llamatelemetry.shutdown()
    assert not telemetry.settings.enabled
    assert not out.exists() or not out.read_text()


def test_resource_attributes_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    class Resources:
        @hookimpl
        def llamatelemetry_resource_attributes(self) -> dict[str, Any]:
            return {"host.role": "from-plugin", "deployment.environment.name": "from-plugin"}

    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=from-env,team=llm")
    with fresh_plugin_manager(Resources()), InMemoryTelemetry(resource_attributes={"team": "from-init"}) as t:
        with llamatelemetry.span("r"):
            pass
        resource = dict(t.spans()[0].resource.attributes)
    assert resource["host.role"] == "from-plugin"
    assert resource["deployment.environment.name"] == "from-env"
    assert resource["team"] == "from-init"
    assert resource["service.name"] == "llamatelemetry-test"
    assert resource["telemetry.distro.name"] == "llamatelemetry"


def test_export_hook_edits_and_drops_spans(tmp_path: Path) -> None:
    class Filter:
        @hookimpl
        def llamatelemetry_export_span(self, span: Any) -> None:
            if span.name == "health check":
                span.drop()
            span.attributes.pop("user.email", None)
            span.attributes["exported.by"] = "filter"

    out = tmp_path / "filtered.jsonl"
    with fresh_plugin_manager(Filter()):
        telemetry = llamatelemetry.init(service_name="f", output_file=out, metrics_exporter="none")
        with llamatelemetry.span("health check"):
            pass
        with llamatelemetry.span("real work", attributes={"user.email": "a@b.c"}):
            pass
        llamatelemetry.shutdown()
    spans = [r for r in _read_jsonl(out) if r["signal"] == "span"]
    assert [s["name"] for s in spans] == ["real work"]
    assert "user.email" not in spans[0]["attributes"]
    assert spans[0]["attributes"]["exported.by"] == "filter"
    assert telemetry.export_stats.filtered == 1


def test_hooks_run_on_telemetry_start_and_shutdown() -> None:
    events: list[str] = []

    class Lifecycle:
        @hookimpl
        def llamatelemetry_telemetry_start(self, settings: Any, tracer_provider: Any, meter_provider: Any) -> None:
            events.append(f"start {settings.service_name}")

        @hookimpl
        def llamatelemetry_telemetry_shutdown(self, settings: Any) -> None:
            events.append("shutdown")

    with fresh_plugin_manager(Lifecycle()):
        llamatelemetry.init(service_name="life", traces_exporter="none", metrics_exporter="none")
        llamatelemetry.shutdown()
        llamatelemetry.shutdown()
    assert events == ["start life", "shutdown"]


@pytest.fixture
def black_hole_collector() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a collector that has hung."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                held.append(connection)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1/traces"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_hung_collector_drops_and_counts_spans_without_blocking_the_caller(black_hole_collector: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    exporter = build_otlp_exporter(black_hole_collector, protocol="http/protobuf", timeout_s=1)
    processor = QueueingSpanProcessor(exporter, max_queue_size=10, max_export_batch_size=5, schedule_delay_s=0.05)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("drop-test")
    for index in range(60):
        with tracer.start_as_current_span(f"s{index}"):
            pass
    provider.shutdown()
    stats = processor.stats
    assert stats.dropped > 0, "a full queue must drop, not block"
    assert stats.exported == 0
    assert stats.exported + stats.dropped + stats.failed == 60, f"every span is accounted for: {stats}"


def test_existing_application_provider_is_used_not_replaced(run_python: Any, tmp_path: Path) -> None:
    result = run_python(f"""
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import llamatelemetry

        app_exporter = InMemorySpanExporter()
        app_provider = TracerProvider()
        app_provider.add_span_processor(SimpleSpanProcessor(app_exporter))
        trace.set_tracer_provider(app_provider)

        telemetry = llamatelemetry.init(service_name="ours", output_file={str(tmp_path / "ours.jsonl")!r},
                                        metrics_exporter="none")
        with llamatelemetry.span("inside"):
            pass
        llamatelemetry.shutdown()
        print(json.dumps({{"same": telemetry.tracer_provider is app_provider,
                           "global_kept": trace.get_tracer_provider() is app_provider,
                           "app_saw": [s.name for s in app_exporter.get_finished_spans()]}}))
        """)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == {"same": True, "global_kept": True, "app_saw": ["inside"]}
    ours = [r["name"] for r in _read_jsonl(tmp_path / "ours.jsonl") if r["signal"] == "span"]
    assert ours == ["inside"], "the explicitly requested output also gets the spans"


def test_otel_exporter_variables_add_no_second_exporter_to_an_application_provider(run_python: Any) -> None:
    # opentelemetry-instrument's distro configures the global provider from OTEL_TRACES_EXPORTER=otlp
    # and the endpoint variables; init() reading the same variables must not export every span twice.
    env = dict(os.environ, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
               OTEL_METRICS_EXPORTER="none")
    result = run_python("""
        import logging
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import llamatelemetry

        logging.basicConfig(level=logging.INFO)
        trace.set_tracer_provider(TracerProvider())
        from_variables = llamatelemetry.init(service_name="zero-code")
        print(from_variables.span_processor is None)
        llamatelemetry.shutdown()
        explicit = llamatelemetry.init(service_name="asked", otlp_endpoint="http://127.0.0.1:9",
                                       shutdown_timeout=0.2)
        print(explicit.span_processor is not None)
        llamatelemetry.shutdown()
        """, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
    assert "adds no second otlp exporter" in result.stderr


def test_providers_can_be_replaced_when_asked(run_python: Any) -> None:
    result = run_python("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import llamatelemetry

        app_provider = TracerProvider()
        trace.set_tracer_provider(app_provider)
        telemetry = llamatelemetry.init(service_name="own", use_existing_providers=False,
                                        traces_exporter="none", metrics_exporter="none")
        print(telemetry.owns_tracer_provider, telemetry.tracer_provider is not app_provider,
              llamatelemetry.get_tracer() is telemetry.tracer)
        llamatelemetry.shutdown()
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_spans_are_flushed_at_interpreter_exit_without_shutdown(run_python: Any, tmp_path: Path) -> None:
    out = tmp_path / "atexit.jsonl"
    result = run_python(f"""
        import llamatelemetry
        llamatelemetry.init(service_name="exit", output_file={str(out)!r})
        with llamatelemetry.span("before exit"):
            pass
        """)
    assert result.returncode == 0, result.stderr
    assert [r["name"] for r in _read_jsonl(out) if r["signal"] == "span"] == ["before exit"]


def test_setup_provider_and_getters() -> None:
    from llamatelemetry.otel import get_meter, get_tracer, setup_provider

    provider = setup_provider(service_name="sp", traces_exporter="none", metrics_exporter="none",
                              set_global_providers=False)
    telemetry = llamatelemetry.current()
    assert telemetry is not None and provider is telemetry.tracer_provider
    assert get_tracer() is telemetry.tracer and get_meter() is telemetry.meter
    assert get_tracer("other.library") is not telemetry.tracer


def test_cached_instruments_are_made_once_per_meter() -> None:
    from llamatelemetry.otel import cached_instruments

    made: list[Any] = []

    def create(meter: Any) -> Any:
        made.append(meter)
        return meter.create_counter("test.cached")

    with InMemoryTelemetry() as first:
        counter = cached_instruments("test-cache", create)
        assert cached_instruments("test-cache", create) is counter
        counter.add(2)
        assert [p.value for p in first.metric_points("test.cached")] == [2]
    with InMemoryTelemetry() as second:
        again = cached_instruments("test-cache", create)
        assert again is not counter, "a new init() has a new meter, so new instruments"
        again.add(3)
        assert [p.value for p in second.metric_points("test.cached")] == [3]
    assert len(made) == 2


def test_plugins_given_to_init_are_unregistered_at_shutdown(tmp_path: Path) -> None:
    """A later init() without them must not keep running their hooks (they belong to that telemetry)."""
    from llamatelemetry.plugins import get_plugin_manager

    class Marker:
        calls = 0

        @hookimpl
        def llamatelemetry_telemetry_start(self, settings: Any, tracer_provider: Any, meter_provider: Any) -> None:
            Marker.calls += 1

    marker = Marker()
    llamatelemetry.init(service_name="with-plugin", output_file=tmp_path / "a.jsonl", plugins=[marker])
    assert get_plugin_manager().is_registered(marker) and Marker.calls == 1
    llamatelemetry.shutdown()
    assert not get_plugin_manager().is_registered(marker)
    llamatelemetry.init(service_name="without", output_file=tmp_path / "b.jsonl")
    llamatelemetry.shutdown()
    assert Marker.calls == 1
