"""init(prometheus_port=...): the /metrics endpoint, its configuration, errors, and shutdown."""

from __future__ import annotations

import logging
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.exporter.prometheus", reason='pip install "llamatelemetry-core[prometheus]"')

import llamatelemetry
from llamatelemetry.config import resolve_settings
from llamatelemetry.errors import ConfigurationError, ExtraNotInstalledError

HOST = "127.0.0.1"
ATTRS = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "llama_cpp", "gen_ai.request.model": "tiny"}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        # As every server does (http.server included): a closed connection's TIME_WAIT does not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_metrics_are_served_until_shutdown_releases_the_port() -> None:
    """A scrape shows the recorded histogram under its Prometheus name; shutdown() frees the port in time."""
    telemetry = llamatelemetry.init(service_name="prom-endpoint", prometheus_port=0, prometheus_host=HOST,
                                    traces_exporter="none", use_existing_providers=False, shutdown_timeout=2)
    endpoint = telemetry.prometheus
    assert endpoint is not None and endpoint.port > 0
    assert endpoint.url == f"http://{HOST}:{endpoint.port}/metrics"
    assert telemetry.settings.metrics.exporter == "none", "Prometheus is the destination: no console output"
    telemetry.metrics.operation_duration.record(0.3, ATTRS)
    telemetry.metrics.token_usage.record(7, {**ATTRS, "gen_ai.token.type": "output"})
    text = _scrape(endpoint.url)
    bucket = [line for line in text.splitlines()
              if line.startswith("gen_ai_client_operation_duration_seconds_bucket{") and 'le="0.32"' in line]
    assert len(bucket) == 1 and bucket[0].endswith(" 1.0"), text[:2000]
    assert 'service_name="prom-endpoint"' in bucket[0] and 'gen_ai_request_model="tiny"' in bucket[0]
    assert "gen_ai_client_token_usage_sum{" in text and "llamatelemetry_telemetry_spans_exported_total" in text
    assert "python_gc_objects_collected_total" not in text, "our registry only: no process collectors"
    assert not _bindable(endpoint.port)

    started = time.monotonic()
    llamatelemetry.shutdown()
    assert time.monotonic() - started < 1.0
    with pytest.raises(urllib.error.URLError):
        _scrape(endpoint.url)
    assert _bindable(endpoint.port), "shutdown() must release the port"
    # A new init() (a restarted worker) serves on the same port at once.
    again = llamatelemetry.init(prometheus_port=endpoint.port, prometheus_host=HOST, traces_exporter="none",
                                use_existing_providers=False)
    assert again.prometheus is not None and again.prometheus.port == endpoint.port
    assert "target_info{" in _scrape(again.prometheus.url)


def test_the_variable_serves_and_otlp_metrics_still_flow(otlp_collector: tuple[Any, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """LLAMATELEMETRY_PROMETHEUS_PORT adds the endpoint beside OTLP: the same point reaches both."""
    rotel, sink = otlp_collector
    monkeypatch.setenv("LLAMATELEMETRY_PROMETHEUS_PORT", "0")
    monkeypatch.setenv("LLAMATELEMETRY_PROMETHEUS_HOST", HOST)
    telemetry = llamatelemetry.init(service_name="prom-and-otlp", otlp_endpoint=rotel.grpc_endpoint,
                                    use_existing_providers=False)
    assert telemetry.prometheus is not None and telemetry.settings.prometheus is not None
    assert telemetry.settings.prometheus.source == "LLAMATELEMETRY_PROMETHEUS_PORT"
    assert telemetry.settings.metrics.exporter == "otlp"
    assert "Prometheus scrapes 127.0.0.1:0" in telemetry.settings.describe()
    telemetry.metrics.operation_duration.record(0.5, ATTRS)
    assert "gen_ai_client_operation_duration_seconds_count{" in _scrape(telemetry.prometheus.url)
    llamatelemetry.shutdown()
    (point,) = [p for p in sink.wait_for_metrics("gen_ai.client.operation.duration")
                if p.resource.get("service.name") == "prom-and-otlp"]
    assert point.sum == pytest.approx(0.5)


def test_an_explicit_metrics_exporter_is_kept() -> None:
    """Only the console fallback gives way to Prometheus; an exporter asked for stays."""
    assert resolve_settings(prometheus_port=9464, environ={}).metrics.exporter == "none"
    assert resolve_settings(prometheus_port=9464, metrics_exporter="console", environ={}).metrics.exporter == "console"
    assert resolve_settings(prometheus_port=9464, environ={"OTEL_METRICS_EXPORTER": "console"}).metrics.exporter == \
        "console"
    assert resolve_settings(environ={}).metrics.exporter == "console"
    assert resolve_settings(environ={}).prometheus is None
    settings = resolve_settings(prometheus_port=9464, environ={}).prometheus
    assert settings is not None and (settings.host, settings.port) == ("localhost", 9464)


@pytest.mark.parametrize(("arguments", "shown", "form"), [
    ({"prometheus_port": -1}, "prometheus_port=-1", "0 to 65535"),
    ({"prometheus_port": 65536}, "prometheus_port=65536", "0 to 65535"),
    ({"prometheus_port": "9464"}, "prometheus_port='9464'", "TCP port number"),
    ({"prometheus_port": True}, "prometheus_port=True", "TCP port number"),
    ({"prometheus_port": 94.64}, "prometheus_port=94.64", "TCP port number"),
    ({"prometheus_port": 9464, "prometheus_host": "not a host!"}, "prometheus_host='not a host!'", "0.0.0.0"),
    ({"prometheus_port": 9464, "prometheus_host": ""}, "prometheus_host=''", "host name or IP address"),
    ({"prometheus_port": 9464, "prometheus_host": 8080}, "prometheus_host=8080", "host name or IP address"),
])
def test_bad_arguments_raise_naming_the_value_and_the_form(arguments: dict[str, Any], shown: str, form: str) -> None:
    """A bad argument is a ConfigurationError that says what was given and what to give."""
    with pytest.raises(ConfigurationError) as caught:
        llamatelemetry.init(**arguments)
    assert f"init({shown})" in str(caught.value) and form in str(caught.value)
    assert llamatelemetry.current() is None


def test_hosts_that_bind() -> None:
    """Names, IPv4 and IPv6 addresses (bracketed or not) are accepted."""
    for host in ("localhost", "0.0.0.0", "::", "[::1]", "metrics.example.internal"):
        settings = resolve_settings(prometheus_port=0, prometheus_host=host, environ={}).prometheus
        assert settings is not None and settings.host == host


@pytest.mark.parametrize(("variables", "warning"), [
    ({"LLAMATELEMETRY_PROMETHEUS_PORT": "nine"}, "LLAMATELEMETRY_PROMETHEUS_PORT='nine'"),
    ({"LLAMATELEMETRY_PROMETHEUS_PORT": "70000"}, "LLAMATELEMETRY_PROMETHEUS_PORT='70000'"),
])
def test_a_malformed_port_variable_warns_and_serves_nothing(variables: dict[str, str], warning: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """As for every variable: a warning naming it and the form, then the default (no endpoint)."""
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.config"):
        settings = resolve_settings(environ=variables)
    assert settings.prometheus is None
    assert any(warning in r.getMessage() and "0 to 65535" in r.getMessage() and "no Prometheus endpoint"
               in r.getMessage() for r in caplog.records), caplog.text


def test_a_malformed_host_variable_warns_and_uses_localhost(caplog: pytest.LogCaptureFixture) -> None:
    """A bad host from the environment falls back to localhost, with a warning."""
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.config"):
        settings = resolve_settings(environ={"LLAMATELEMETRY_PROMETHEUS_PORT": "9464",
                                             "LLAMATELEMETRY_PROMETHEUS_HOST": "bad host"})
    assert settings.prometheus is not None and settings.prometheus.host == "localhost"
    assert "LLAMATELEMETRY_PROMETHEUS_HOST='bad host'" in caplog.text and "the default, localhost" in caplog.text


def test_a_port_in_use(busy_port: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """From init(): ConfigurationError naming the address. From the variable: a warning, and no endpoint."""
    with pytest.raises(ConfigurationError) as caught:
        llamatelemetry.init(prometheus_port=busy_port, prometheus_host=HOST, traces_exporter="none",
                            use_existing_providers=False)
    message = str(caught.value)
    assert f"init(prometheus_port=...): cannot serve metrics for Prometheus on {HOST}:{busy_port}" in message
    assert "pick a free port" in message and llamatelemetry.current() is None

    monkeypatch.setenv("LLAMATELEMETRY_PROMETHEUS_PORT", str(busy_port))
    monkeypatch.setenv("LLAMATELEMETRY_PROMETHEUS_HOST", HOST)
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        telemetry = llamatelemetry.init(traces_exporter="none", use_existing_providers=False)
    assert telemetry.prometheus is None
    assert f"LLAMATELEMETRY_PROMETHEUS_PORT: cannot serve metrics for Prometheus on {HOST}:{busy_port}" in caplog.text


def test_without_the_exporter_init_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package missing: an ImportError whose message is the install command; nothing is set up."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)  # import fails as if not installed
    with pytest.raises(ExtraNotInstalledError) as caught:
        llamatelemetry.init(prometheus_port=0, traces_exporter="none", use_existing_providers=False)
    assert isinstance(caught.value, ImportError)
    assert caught.value.install_command == 'pip install "llamatelemetry-core[prometheus]"'
    assert str(caught.value) == ("init(prometheus_port=...) needs the opentelemetry-exporter-prometheus package, which "
                                 'is not installed. Install it with: pip install "llamatelemetry-core[prometheus]"')
    assert llamatelemetry.current() is None


def test_on_an_application_meter_provider(run_python: Any) -> None:
    """That provider cannot take a reader: init()'s argument raises, the variable warns; both say what to do."""
    result = run_python("""
        import logging, os
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        import llamatelemetry
        from llamatelemetry.errors import ConfigurationError

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        metrics.set_meter_provider(MeterProvider())
        try:
            llamatelemetry.init(prometheus_port=0, traces_exporter="none")
        except ConfigurationError as exc:
            print("RAISED:", exc)
        os.environ["LLAMATELEMETRY_PROMETHEUS_PORT"] = "0"
        telemetry = llamatelemetry.init(traces_exporter="none")
        print("ENDPOINT:", telemetry.prometheus)
    """)
    assert result.returncode == 0, result.stderr
    assert "RAISED: init(prometheus_port=...) asks for a Prometheus endpoint, but llamatelemetry uses the " \
           "application's MeterProvider" in result.stdout
    assert "PrometheusMetricReader" in result.stdout and "use_existing_providers=False" in result.stdout
    assert "ENDPOINT: None" in result.stdout
    assert "LLAMATELEMETRY_PROMETHEUS_PORT asks for a Prometheus endpoint" in result.stderr


def test_a_failed_init_releases_the_port(run_python: Any) -> None:
    """init() failing after the endpoint started (here: an application TracerProvider without processors)."""
    result = run_python("""
        import socket
        from opentelemetry import trace
        import llamatelemetry
        from llamatelemetry.errors import ConfigurationError

        class Bare(trace.NoOpTracerProvider):
            pass  # no add_span_processor

        trace.set_tracer_provider(Bare())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            llamatelemetry.init(prometheus_port=port, prometheus_host="127.0.0.1", otlp_endpoint="http://127.0.0.1:9")
        except ConfigurationError as exc:
            print("RAISED:", exc)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            print("PORT FREE")
    """)
    assert result.returncode == 0, result.stderr
    assert "RAISED: The application's TracerProvider cannot take span processors" in result.stdout
    assert "PORT FREE" in result.stdout


def test_flushing_often_without_scrapes_holds_one_collection() -> None:
    """force_flush() collects for every reader: between scrapes only the newest collection is kept (cumulative)."""
    telemetry = llamatelemetry.init(prometheus_port=0, prometheus_host=HOST, traces_exporter="none",
                                    use_existing_providers=False)
    assert telemetry.prometheus is not None
    for i in range(50):
        telemetry.metrics.operation_duration.record(0.01 * (i + 1), ATTRS)
        telemetry.force_flush()
    # White-box: the exporter's queue of collections waiting for a scrape (its private deque).
    assert len(telemetry.prometheus.reader._collector._metrics_datas) == 1  # type: ignore[attr-defined]
    text = _scrape(telemetry.prometheus.url)
    (count,) = [line for line in text.splitlines() if line.startswith("gen_ai_client_operation_duration_seconds_count")]
    assert count.endswith(" 50.0"), "each point counted once, by the newest collection"
    assert len(telemetry.prometheus.reader._collector._metrics_datas) == 0  # type: ignore[attr-defined]


def test_the_sdk_standard_variable_asks_for_the_pull_exporter(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """OTEL_METRICS_EXPORTER=prometheus serves on OTEL_EXPORTER_PROMETHEUS_HOST/PORT, as the OTel SDK would."""
    defaults = resolve_settings(environ={"OTEL_METRICS_EXPORTER": "prometheus"})
    assert defaults.metrics.exporter == "none"
    assert defaults.prometheus is not None and (defaults.prometheus.host, defaults.prometheus.port) == \
        ("localhost", 9464)
    assert defaults.prometheus.source == "OTEL_METRICS_EXPORTER=prometheus"
    by_argument = resolve_settings(metrics_exporter="prometheus", environ={})
    assert by_argument.prometheus is not None and by_argument.prometheus.port == 9464
    # llamatelemetry's own setting wins over the SDK's defaults.
    ours = resolve_settings(prometheus_port=9100, environ={"OTEL_METRICS_EXPORTER": "prometheus"})
    assert ours.prometheus is not None and ours.prometheus.port == 9100
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        bad = resolve_settings(environ={"OTEL_METRICS_EXPORTER": "prometheus",
                                        "OTEL_EXPORTER_PROMETHEUS_PORT": "ninety"})
    assert bad.prometheus is not None and bad.prometheus.port == 9464
    assert "OTEL_EXPORTER_PROMETHEUS_PORT='ninety'" in caplog.text

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", HOST)
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
    telemetry = llamatelemetry.init(service_name="prom-standard", traces_exporter="none",
                                    use_existing_providers=False)
    try:
        assert telemetry.prometheus is not None and telemetry.prometheus.port == port
        telemetry.metrics.operation_duration.record(0.2, ATTRS)
        assert "gen_ai_client_operation_duration_seconds_count{" in _scrape(telemetry.prometheus.url)
    finally:
        llamatelemetry.shutdown()
