"""How init() arguments and OTEL_* / LLAMATELEMETRY_* variables combine (resolve_settings)."""

from __future__ import annotations

import pytest

from llamatelemetry.config import parse_headers, resolve_settings
from llamatelemetry.errors import ConfigurationError
from llamatelemetry.semconv.content import CaptureMode


def settings(env: dict[str, str] | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    return resolve_settings(environ=env or {}, **kwargs)  # type: ignore[arg-type]


def test_no_endpoint_goes_to_console_or_file() -> None:
    console = settings()
    assert console.traces.exporter == "console" and console.metrics.exporter == "console"
    to_file = settings(output_file="/tmp/t.jsonl")
    assert to_file.traces.exporter == "file" and to_file.output_file == "/tmp/t.jsonl"
    from_env = settings({"LLAMATELEMETRY_OUTPUT_FILE": "/tmp/e.jsonl"})
    assert from_env.metrics.exporter == "file" and from_env.output_file == "/tmp/e.jsonl"


def test_init_endpoint_is_grpc_by_default_and_http_appends_signal_paths() -> None:
    grpc = settings(otlp_endpoint="http://collector:4317")
    assert (grpc.traces.exporter, grpc.traces.protocol, grpc.traces.endpoint) == ("otlp", "grpc", "http://collector:4317")
    assert grpc.metrics.endpoint == "http://collector:4317"
    http = settings(otlp_endpoint="http://collector:4318/")
    assert http.traces.protocol == "http/protobuf"
    assert http.traces.endpoint == "http://collector:4318/v1/traces"
    assert http.metrics.endpoint == "http://collector:4318/v1/metrics"
    explicit = settings(otlp_endpoint="http://collector:9999", protocol="http/protobuf")
    assert explicit.traces.endpoint == "http://collector:9999/v1/traces"


def test_otel_environment_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://metrics-only:9000/custom/path",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_METRIC_EXPORT_INTERVAL": "1500",
    }
    resolved = settings(env)
    assert resolved.traces.endpoint == "http://base:4318/v1/traces"
    assert resolved.metrics.endpoint == "http://metrics-only:9000/custom/path", "per-signal endpoints are used as given"
    assert resolved.service_name == "from-env"
    assert (resolved.sampler, resolved.sampler_arg) == ("traceidratio", "0.25")
    assert resolved.metric_export_interval_ms == 1500
    assert settings(env, service_name="from-arg").service_name == "from-arg", "init() arguments win"


def test_per_signal_protocol_and_exporter_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4317",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_METRICS_EXPORTER": "none",
    }
    resolved = settings(env)
    assert resolved.traces.protocol == "http/protobuf"
    assert resolved.traces.endpoint == "http://base:4317/v1/traces"
    assert resolved.metrics.exporter == "none" and resolved.metrics.endpoint is None


def test_otlp_exporter_without_endpoint_uses_the_specification_default() -> None:
    resolved = settings({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert resolved.traces.endpoint == "http://localhost:4318/v1/traces"
    assert settings({"OTEL_TRACES_EXPORTER": "otlp"}).traces.endpoint == "http://localhost:4317"


def test_headers_are_parsed_merged_and_never_shown() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-team=llm,Authorization=Bearer%20general-secret",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20traces-secret",
    }
    resolved = settings(env)
    assert resolved.traces.headers == {"x-team": "llm", "authorization": "Bearer traces-secret"}
    assert resolved.metrics.headers == {"x-team": "llm", "authorization": "Bearer general-secret"}
    shown = repr(resolved) + resolved.describe()
    assert "secret" not in shown
    assert settings(env, headers={"api-key": "k"}).traces.headers == {"api-key": "k"}


def test_malformed_headers_error_never_echoes_the_value() -> None:
    with pytest.raises(ConfigurationError, match="key=value") as caught:
        parse_headers("token-without-equals-sign-SECRET", source="OTEL_EXPORTER_OTLP_HEADERS")
    assert "SECRET" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"protocol": "http/json"}, {}, "http/json.*not supported"),
        ({"protocol": "carrier-pigeon"}, {}, "not an OTLP protocol"),
        ({}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"otlp_endpoint": "ftp://host:21"}, {}, "scheme 'ftp'"),
        ({"otlp_endpoint": "http://"}, {}, "not an endpoint URL"),
        ({"otlp_endpoint": "http://host:notaport"}, {}, "invalid port"),
        ({}, {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"traces_exporter": "file"}, {}, "needs a file"),
        ({"metric_export_interval_ms": "soon"}, {}, "milliseconds"),  # the variable warns: test_config_validation
        ({"metric_export_interval_ms": 0}, {}, "positive"),
        ({"enable_gpu": "maybe"}, {}, "not a boolean"),  # the variable warns: test_config_validation
        ({"semconv_compat": "ancient"}, {}, "unknown option"),
        ({"capture_content": "EVERYTHING"}, {}, "not a capture mode"),
    ],
)
def test_bad_configuration_names_the_problem(kwargs: dict[str, object], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings(env, **kwargs)


def test_content_capture_is_off_by_default_and_switchable() -> None:
    assert settings().capture_content is CaptureMode.NO_CONTENT
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_and_event"}
    assert settings(env).capture_content is CaptureMode.SPAN_AND_EVENT
    assert settings(env, capture_content=False).capture_content is CaptureMode.NO_CONTENT
    assert settings(capture_content="EVENT_ONLY").capture_content is CaptureMode.EVENT_ONLY


def test_switches() -> None:
    assert settings({"OTEL_SDK_DISABLED": "true"}).enabled is False
    assert settings().enabled is True
    assert settings({"LLAMATELEMETRY_SEMCONV_COMPAT": "deprecated, llm"}).semconv_compat == {"deprecated", "llm"}
    assert settings({"LLAMATELEMETRY_ENABLE_GPU": "1"}).enable_gpu is True
    assert settings({"LLAMATELEMETRY_ENABLE_GPU": "1"}, enable_gpu=False).enable_gpu is False


def test_endpoints_are_logged_without_the_secrets_some_vendors_put_in_urls() -> None:
    resolved = settings(otlp_endpoint="https://user:s3cret-token@otlp.example.com:4318/s3cret-path?api_key=s3cret-q")
    shown = repr(resolved) + resolved.describe()
    assert "s3cret" not in shown
    assert "https://otlp.example.com:4318/... (query hidden)" in resolved.describe()
    plain = settings(otlp_endpoint="http://127.0.0.1:4318")
    assert "http://127.0.0.1:4318/v1/traces" in plain.describe()
