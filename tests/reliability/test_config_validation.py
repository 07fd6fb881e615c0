"""Clear errors at the edges (issue 15, item 3).

A bad ``init()`` argument raises ``ConfigurationError`` naming the value and the expected form,
before anything is started. A malformed environment variable is warned about and ignored (the
default is used), as the OpenTelemetry SDK does, except a variable naming a component that does
not exist (exporter, OTLP protocol), which raises as the SDK's configurator does.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

import llamatelemetry
from llamatelemetry.config import resolve_settings
from llamatelemetry.errors import ConfigurationError
from llamatelemetry.otel.retry import RetryPolicy
from llamatelemetry.semconv.content import CaptureMode


@pytest.mark.parametrize(("kwargs", "named", "form"), [
    ({"otlp_endpoint": "not a url at all"}, "'not a url at all'", "http://localhost:4317"),
    ({"otlp_endpoint": "http://exa mple.com:4317"}, "'http://exa mple.com:4317'", "http://localhost:4317"),
    ({"otlp_endpoint": "grpc://collector:4317"}, "scheme 'grpc'", "http:// or https://"),
    ({"otlp_endpoint": "http://collector:99999"}, "'http://collector:99999'", "invalid port"),
    ({"otlp_endpoint": 4317}, "4317", "http://localhost:4317"),
    ({"traces_endpoint": "http://:4318/v1/traces"}, "init(traces_endpoint=...)", "http://localhost:4318"),
    ({"otlp_endpoint": "http://c:4317", "protocol": "grpcs"}, "'grpcs'", "grpc or http/protobuf"),
    ({"otlp_endpoint": "http://c:4317", "protocol": "http/json"}, "'http/json'", "grpc or http/protobuf"),
    ({"traces_exporter": "jaeger"}, "init(traces_exporter=...)='jaeger'", "otlp, console, file, none"),
    ({"metrics_exporter": "zipkin"}, "init(metrics_exporter=...)='zipkin'", "otlp, console, file, none"),
    ({"headers": {"bad name": "x"}}, "'bad name'", "letters, digits"),
    ({"headers": {"x-count": 3}}, "'x-count'", "must be strings"),
    ({"headers": ["authorization=x"]}, "list", "key=value,key2=value2"),
    ({"sampler": "sometimes"}, "'sometimes'", "parentbased_traceidratio"),
    ({"sampler": "traceidratio", "sampler_arg": 2}, "2", "between 0 and 1"),
    ({"sampler": "parentbased_traceidratio", "sampler_arg": "half"}, "'half'", "between 0 and 1"),
    ({"span_queue_size": -1}, "span_queue_size=-1", "positive whole number of spans"),
    ({"span_queue_size": "100"}, "span_queue_size='100'", "positive whole number of spans"),
    ({"export_buffer_size": -5}, "export_buffer_size=-5", "positive whole number of items"),
    ({"export_buffer_size": 2.5}, "export_buffer_size=2.5", "positive whole number of items"),
    ({"shutdown_timeout": -1}, "shutdown_timeout=-1", "number of seconds, 0 or more"),
    ({"shutdown_timeout": "2s"}, "shutdown_timeout='2s'", "number of seconds, 0 or more"),
    ({"metric_export_interval_ms": -100}, "metric_export_interval_ms=-100", "positive whole number of milliseconds"),
    ({"enable_gpu": "no"}, "enable_gpu='no'", "True or False"),
    ({"semconv_compat": 5}, "semconv_compat=5", "'deprecated', 'llm'"),
    ({"export_retry": {"initial_backoff_s": 1}}, "export_retry={'initial_backoff_s': 1}", "RetryPolicy(...)"),
])
def test_a_bad_init_argument_names_the_value_and_the_expected_form(kwargs: dict[str, Any], named: str,
                                                                   form: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        llamatelemetry.init(**kwargs)
    message = str(caught.value)
    assert named in message and form in message, message
    assert llamatelemetry.current() is None, "nothing was started"


@pytest.mark.parametrize("headers", ["token-without-equals-SECRET", {"authorization": "Bearer SECRET\r\nx-evil: 1"}])
def test_a_bad_header_is_named_but_its_value_never_shown(headers: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        llamatelemetry.init(otlp_endpoint="http://c:4317", headers=headers)
    assert "SECRET" not in str(caught.value)
    assert "key=value" in str(caught.value) or "'authorization'" in str(caught.value)


@pytest.mark.parametrize(("kwargs", "named", "form"), [
    ({"initial_backoff_s": -1}, "initial_backoff_s=-1", "positive number of seconds"),
    ({"max_elapsed_s": 0}, "max_elapsed_s=0", "positive number of seconds"),
    ({"initial_backoff_s": 2, "max_backoff_s": 1}, "max_backoff_s=1", "at least the first"),
    ({"timeout_s": 0}, "timeout_s=0", "positive number of seconds or None"),
])
def test_a_bad_retry_policy_names_the_value(kwargs: dict[str, Any], named: str, form: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**kwargs)
    assert named in str(caught.value) and form in str(caught.value)


def test_good_arguments_and_variables_are_used_and_arguments_win() -> None:
    env = {"LLAMATELEMETRY_SHUTDOWN_TIMEOUT": "0.5", "LLAMATELEMETRY_EXPORT_BUFFER_SIZE": "100"}
    from_env = resolve_settings(environ=env)
    assert (from_env.shutdown_timeout_s, from_env.export_buffer_size) == (0.5, 100)
    from_args = resolve_settings(environ=env, shutdown_timeout=0, export_buffer_size=5000)
    assert (from_args.shutdown_timeout_s, from_args.export_buffer_size) == (0, 5000)
    defaults = resolve_settings(environ={})
    assert defaults.shutdown_timeout_s <= 2.0 and defaults.export_buffer_size >= 3000, "a 60 s outage at 50 spans/s"
    scheme_less = resolve_settings(environ={}, otlp_endpoint="collector:4318")
    assert scheme_less.traces.endpoint == "http://collector:4318/v1/traces", "OTLP/HTTP needs a scheme: http://"
    assert resolve_settings(environ={}, headers="x-team=llm,Authorization=Bearer%20k").traces.headers == {
        "x-team": "llm", "authorization": "Bearer k"}


@pytest.mark.parametrize(("env", "check", "named"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url at all"},
     lambda s: s.traces.exporter == "console" and s.traces.endpoint is None, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://bad host:4318"},
     lambda s: s.traces.exporter == "console", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, lambda s: s.metric_export_interval_ms == 60_000, "'soon'"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "-5"}, lambda s: s.metric_export_interval_ms == 60_000, "'-5'"),
    ({"LLAMATELEMETRY_ENABLE_GPU": "maybe"}, lambda s: s.enable_gpu is False, "'maybe'"),
    ({"OTEL_SDK_DISABLED": "perhaps"}, lambda s: s.enabled is True, "OTEL_SDK_DISABLED"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, lambda s: s.sampler is None, "'sometimes'"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
     lambda s: s.sampler == "traceidratio" and s.sampler_arg is None, "OTEL_TRACES_SAMPLER_ARG"),
    ({"LLAMATELEMETRY_SHUTDOWN_TIMEOUT": "-1"}, lambda s: s.shutdown_timeout_s == 2.0, "TIMEOUT='-1'"),
    ({"LLAMATELEMETRY_EXPORT_BUFFER_SIZE": "lots"}, lambda s: s.export_buffer_size == 8192, "'lots'"),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVERYTHING"},
     lambda s: s.capture_content is CaptureMode.NO_CONTENT, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
    ({"LLAMATELEMETRY_SEMCONV_COMPAT": "llm,ancient"}, lambda s: s.semconv_compat == {"llm"}, "ancient"),
])
def test_a_malformed_variable_is_warned_about_and_ignored(env: dict[str, str], check: Any, named: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        settings = resolve_settings(environ=env)
    assert check(settings), settings
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and named in warnings[0] and "ignores" in warnings[0], warnings


def test_a_malformed_header_variable_keeps_the_good_entries_and_never_shows_a_value(
    caplog: pytest.LogCaptureFixture
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
           "OTEL_EXPORTER_OTLP_HEADERS": "x-team=llm,token-without-equals-SECRET,api-key=k%0Ainjected"}
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        settings = resolve_settings(environ=env)
    assert settings.traces.headers == {"x-team": "llm"}
    shown = caplog.text
    assert "entry 2" in shown and "entry 3" in shown and "SECRET" not in shown and "injected" not in shown


@pytest.mark.parametrize(("env", "named"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "thrift"},
     "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='thrift'"),
])
def test_a_variable_naming_a_missing_component_raises_as_the_sdk_does(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match="use"):
        resolve_settings(environ=env)
    with pytest.raises(ConfigurationError) as caught:
        resolve_settings(environ=env)
    assert named in str(caught.value)


def test_init_starts_despite_malformed_variables(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace import sampling

    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "soon")
    monkeypatch.setenv("LLAMATELEMETRY_EXPORT_BUFFER_SIZE", "-3")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        telemetry = llamatelemetry.init(traces_exporter="none", metrics_exporter="none", set_global_providers=False,
                                        use_existing_providers=False)
    assert telemetry.settings.metric_export_interval_ms == 60_000
    assert telemetry.settings.export_buffer_size == 8192
    assert isinstance(telemetry.tracer_provider.sampler, sampling.ParentBased)  # type: ignore[attr-defined]
    assert sum("ignores" in r.getMessage() for r in caplog.records) == 3

    from llamatelemetry.otel.sampling import configure_sampler

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        assert isinstance(configure_sampler(), sampling.ParentBased)
    assert "OTEL_TRACES_SAMPLER='sometimes'" in caplog.text


@pytest.mark.parametrize(("kwargs", "named", "form"), [
    ({"endpoint": "not a url at all"}, "'not a url at all'", "http://localhost:4317"),
    ({"endpoint": "grpc://collector:4317"}, "scheme 'grpc'", "http:// or https://"),
    ({"endpoint": "collector:4318/v1/traces", "protocol": "http/protobuf"}, "'collector:4318/v1/traces'",
     "http://"),
    ({"endpoint": "http://c:4317", "headers": {"bad name": "x"}}, "'bad name'", "letters, digits"),
    ({"endpoint": "http://c:4317", "timeout_s": -1}, "timeout_s=-1", "positive number of seconds"),
    ({"endpoint": "http://c:4317", "protocol": "thrift"}, "'thrift'", "'grpc' or 'http/protobuf'"),
])
def test_build_otlp_exporter_checks_its_arguments_like_init(kwargs: dict[str, Any], named: str, form: str) -> None:
    """The public exporter factory (api reference) rejects what init() rejects, before building anything."""
    from llamatelemetry.otel.exporters import build_otlp_exporter

    with pytest.raises(ConfigurationError) as caught:
        build_otlp_exporter(**kwargs)
    assert named in str(caught.value) and form in str(caught.value), str(caught.value)


@pytest.mark.parametrize(("kwargs", "named", "form"), [
    ({"service_name": 5}, "service_name=5", "non-empty string"),
    ({"service_name": "  "}, "service_name='  '", "non-empty string"),
    ({"service_version": 1.2}, "service_version=1.2", "non-empty string"),
    ({"output_file": 123}, "output_file=123", "file path"),
    ({"otlp_endpoint": "http://c:4317", "protocol": ""}, "protocol=...)=''", "grpc or http/protobuf"),
    ({"resource_attributes": ["team=llm"]}, "resource_attributes=['team=llm']", "dict"),
])
def test_other_bad_init_arguments_raise_configuration_error(kwargs: dict[str, Any], named: str, form: str) -> None:
    """A wrong type or an empty value is a ConfigurationError naming it, not a TypeError deep inside or silence."""
    with pytest.raises(ConfigurationError) as caught:
        llamatelemetry.init(**kwargs)
    assert named in str(caught.value) and form in str(caught.value), str(caught.value)
    assert llamatelemetry.current() is None


def test_a_bad_endpoint_is_named_without_the_secrets_a_url_may_carry(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_settings(otlp_endpoint="ftp://user:s3cret@collector:4317/?api_key=s3cret", environ={})
    assert "s3cret" not in str(caught.value)
    assert "ftp://<user info>@collector:4317/?<query>" in str(caught.value)
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        resolve_settings(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:s3cret@bad host:43x17"})
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in caplog.text and "s3cret" not in caplog.text
