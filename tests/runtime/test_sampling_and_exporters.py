"""Samplers by name and exporter building."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import sampling

from llamatelemetry.errors import ConfigurationError
from llamatelemetry.otel.exporters import build_metric_exporter, build_otlp_exporter, build_span_exporter
from llamatelemetry.otel.sampling import SAMPLER_NAMES, configure_sampler


def test_sampler_names() -> None:
    assert configure_sampler("always_on") is sampling.ALWAYS_ON
    assert configure_sampler("ALWAYS_OFF") is sampling.ALWAYS_OFF
    ratio = configure_sampler("traceidratio", "0.25")
    assert isinstance(ratio, sampling.TraceIdRatioBased) and ratio.rate == 0.25
    parent = configure_sampler("parentbased_traceidratio", 0.5)
    assert isinstance(parent, sampling.ParentBased)
    assert "TraceIdRatioBased{0.5}" in parent.get_description()
    for name in SAMPLER_NAMES:
        configure_sampler(name, "1")


def test_sampler_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    sampler = configure_sampler()
    assert isinstance(sampler, sampling.TraceIdRatioBased) and sampler.rate == 0.1
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    assert isinstance(configure_sampler(), sampling.ParentBased), "the OpenTelemetry default"


@pytest.mark.parametrize(("name", "arg", "message"), [
    ("sometimes", None, "not a sampler.*always_on"),
    ("traceidratio", "1.5", r"outside \[0, 1\]"),
    ("traceidratio", "half", "not a number"),
])
def test_bad_sampler_settings(name: str, arg: str | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        configure_sampler(name, arg)


def test_otlp_exporters_for_each_protocol_and_signal() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetric
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpan
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetric
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpan

    made = [
        build_otlp_exporter("http://127.0.0.1:4317", protocol="grpc", signal="traces"),
        build_otlp_exporter("http://127.0.0.1:4317", protocol="grpc", signal="metrics"),
        build_otlp_exporter("http://127.0.0.1:4318/v1/traces", protocol="http/protobuf", signal="traces",
                            headers={"x-api-key": "k"}),
        build_otlp_exporter("http://127.0.0.1:4318/v1/metrics", protocol="http/protobuf", signal="metrics"),
    ]
    assert [type(e) for e in made] == [GrpcSpan, GrpcMetric, HttpSpan, HttpMetric]
    assert made[2]._endpoint == "http://127.0.0.1:4318/v1/traces"
    for exporter in made:
        exporter.shutdown()


def test_bad_exporter_arguments() -> None:
    with pytest.raises(ConfigurationError, match=r"grpc.*http/protobuf"):
        build_otlp_exporter("http://x:1", protocol="http/json")
    with pytest.raises(ConfigurationError, match="'traces' or 'metrics'"):
        build_otlp_exporter("http://x:1", signal="logs")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="output_file"):
        build_span_exporter("file")
    with pytest.raises(ConfigurationError, match="not supported"):
        build_metric_exporter("zipkin")
    assert build_span_exporter("none") is None and build_metric_exporter("none") is None
