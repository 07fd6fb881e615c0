"""Resolving ``init()`` arguments and environment variables into one settings record.

Precedence, highest first: an ``init()`` argument, a ``LLAMATELEMETRY_*`` variable, the standard
``OTEL_*`` variable, the default. Per-signal OTLP variables win over the general ones, as the
OpenTelemetry specification says.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from typing import Literal

import attrs

from llamatelemetry.errors import ConfigurationError
from llamatelemetry.semconv.content import ENV_CAPTURE_CONTENT, CaptureMode, parse_capture_mode

__all__ = ["TelemetrySettings", "resolve_settings", "parse_headers", "SEMCONV_COMPAT_OPTIONS", "Protocol", "Exporter"]

Protocol = Literal["grpc", "http/protobuf"]
Exporter = Literal["otlp", "console", "file", "none"]

PROTOCOLS: tuple[str, ...] = ("grpc", "http/protobuf")
EXPORTERS: tuple[str, ...] = ("otlp", "console", "file", "none")
SEMCONV_COMPAT_OPTIONS: tuple[str, ...] = ("deprecated", "llm")
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"

ENV_OUTPUT_FILE = "LLAMATELEMETRY_OUTPUT_FILE"
ENV_SEMCONV_COMPAT = "LLAMATELEMETRY_SEMCONV_COMPAT"
ENV_ENABLE_GPU = "LLAMATELEMETRY_ENABLE_GPU"
ENV_ENABLE_NCCL = "LLAMATELEMETRY_ENABLE_NCCL"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@attrs.frozen
class SignalSettings:
    """Where one signal (traces or metrics) goes."""

    exporter: Exporter
    endpoint: str | None = None
    protocol: Protocol = "grpc"
    # Headers carry API keys: kept out of repr so they never reach a log or an error message.
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class TelemetrySettings:
    """Everything ``init()`` resolved; handed to plugins in the ``llamatelemetry_telemetry_*`` hooks."""

    service_name: str
    service_version: str | None
    traces: SignalSettings
    metrics: SignalSettings
    output_file: str | None
    resource_attributes: Mapping[str, object]
    sampler: str | None
    sampler_arg: str | None
    capture_content: CaptureMode
    semconv_compat: frozenset[str]
    enable_gpu: bool
    enable_nccl: bool
    metric_export_interval_ms: int
    use_existing_providers: bool
    enabled: bool

    def describe(self) -> str:
        """A one-paragraph, secret-free summary for logs and the CLI."""

        def where(signal: SignalSettings) -> str:
            if signal.exporter == "otlp":
                return f"OTLP {signal.protocol} to {signal.endpoint}"
            if signal.exporter == "file":
                return f"file {self.output_file}"
            return signal.exporter

        return (f"service {self.service_name!r}: traces -> {where(self.traces)}, "
                f"metrics -> {where(self.metrics)}, content capture {self.capture_content.value}")


def parse_headers(value: str | None, *, source: str) -> dict[str, str]:
    """Parse ``key=value,key2=value2`` (values URL-encoded) as in ``OTEL_EXPORTER_OTLP_HEADERS``."""
    headers: dict[str, str] = {}
    if not value:
        return headers
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            # Name the position, never the value: it may be a secret.
            raise ConfigurationError(
                f"{source} has an entry without 'key=value' form; write it as key=value,key2=value2.")
        headers[urllib.parse.unquote(key.strip()).lower()] = urllib.parse.unquote(raw.strip())
    return headers


def _bool(value: bool | None, env: Mapping[str, str], name: str, default: bool) -> bool:
    if value is not None:
        return bool(value)
    raw = env.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean: use true or false.")


def _check_endpoint(endpoint: str, source: str) -> str:
    endpoint = endpoint.strip()
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if not parsed.hostname:
        raise ConfigurationError(f"{source}={endpoint!r} is not an endpoint URL: write it like http://localhost:4317.")
    if parsed.scheme and parsed.scheme not in ("http", "https"):
        raise ConfigurationError(f"{source}={endpoint!r} has scheme {parsed.scheme!r}: use http:// or https://.")
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigurationError(f"{source}={endpoint!r} has an invalid port.") from None
    return endpoint


def _guess_protocol(endpoint: str) -> Protocol:
    # Only when no protocol is configured: 4318 and /v1/<signal> paths are the OTLP/HTTP defaults.
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parsed.port == 4318 or parsed.path.rstrip("/").endswith(("/v1/traces", "/v1/metrics")):
        return "http/protobuf"
    return "grpc"


def _protocol(value: str | None, source: str) -> Protocol | None:
    if value is None or not value.strip():
        return None
    value = value.strip().lower()
    if value == "http/json":
        raise ConfigurationError(f"{source}='http/json' is not supported: use grpc or http/protobuf.")
    if value not in PROTOCOLS:
        raise ConfigurationError(f"{source}={value!r} is not an OTLP protocol: use grpc or http/protobuf.")
    return value  # type: ignore[return-value]


def _signal(
    signal: Literal["traces", "metrics"],
    *,
    env: Mapping[str, str],
    endpoint_arg: str | None,
    signal_endpoint_arg: str | None,
    protocol_arg: str | None,
    headers_arg: Mapping[str, str] | None,
    exporter_arg: str | None,
    output_file: str | None,
) -> SignalSettings:
    upper = signal.upper()
    exporter_source = f"OTEL_{upper}_EXPORTER"
    exporter = exporter_arg if exporter_arg is not None else env.get(exporter_source)
    if exporter is not None:
        exporter = exporter.strip().lower().split(",")[0]
        if exporter not in EXPORTERS:
            raise ConfigurationError(
                f"{exporter_source}={exporter!r} is not supported: use one of {', '.join(EXPORTERS)}.")

    protocol = (_protocol(protocol_arg, "init(protocol=...)")
                or _protocol(env.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"), f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
                or _protocol(env.get("OTEL_EXPORTER_OTLP_PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"))

    # A signal endpoint is used as given; a base endpoint gets /v1/<signal> appended for HTTP.
    endpoint: str | None = None
    if signal_endpoint_arg:
        endpoint = _check_endpoint(signal_endpoint_arg, f"init({signal}_endpoint=...)")
        protocol = protocol or _guess_protocol(endpoint)
    elif endpoint_arg:
        base = _check_endpoint(endpoint_arg, "init(otlp_endpoint=...)")
        protocol = protocol or _guess_protocol(base)
        endpoint = base if protocol == "grpc" else base.rstrip("/") + f"/v1/{signal}"
    elif env.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"):
        source = f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"
        endpoint = _check_endpoint(env[source], source)
        protocol = protocol or _guess_protocol(endpoint)
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = _check_endpoint(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTEL_EXPORTER_OTLP_ENDPOINT")
        protocol = protocol or _guess_protocol(base)
        endpoint = base if protocol == "grpc" else base.rstrip("/") + f"/v1/{signal}"

    if exporter is None:
        exporter = "otlp" if endpoint else ("file" if output_file else "console")
    if exporter == "otlp" and endpoint is None:
        # OTEL_<SIGNAL>_EXPORTER=otlp without an endpoint: the specification's local default.
        protocol = protocol or "grpc"
        endpoint = DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else f"{DEFAULT_HTTP_ENDPOINT}/v1/{signal}"
    if exporter == "file" and not output_file:
        raise ConfigurationError(
            f"{exporter_source}=file needs a file: pass init(output_file=...) or set {ENV_OUTPUT_FILE}.")

    if headers_arg is not None:
        headers = {str(k).lower(): str(v) for k, v in headers_arg.items()}
    else:
        headers = parse_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS"), source="OTEL_EXPORTER_OTLP_HEADERS")
        headers.update(parse_headers(env.get(f"OTEL_EXPORTER_OTLP_{upper}_HEADERS"),
                                     source=f"OTEL_EXPORTER_OTLP_{upper}_HEADERS"))
    return SignalSettings(exporter=exporter, endpoint=endpoint if exporter == "otlp" else None,  # type: ignore[arg-type]
                          protocol=protocol or "grpc", headers=headers)


def _compat(value: str | list[str] | tuple[str, ...] | None, env: Mapping[str, str]) -> frozenset[str]:
    source = "init(semconv_compat=...)"
    if value is None:
        value, source = env.get(ENV_SEMCONV_COMPAT, ""), ENV_SEMCONV_COMPAT
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = sorted(set(names) - set(SEMCONV_COMPAT_OPTIONS))
    if unknown:
        raise ConfigurationError(f"{source} has unknown option(s) {unknown}: use {', '.join(SEMCONV_COMPAT_OPTIONS)}.")
    return frozenset(names)


def resolve_settings(
    *,
    service_name: str | None = None,
    service_version: str | None = None,
    otlp_endpoint: str | None = None,
    traces_endpoint: str | None = None,
    metrics_endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    traces_exporter: str | None = None,
    metrics_exporter: str | None = None,
    output_file: str | os.PathLike[str] | None = None,
    resource_attributes: Mapping[str, object] | None = None,
    sampler: str | None = None,
    sampler_arg: str | float | None = None,
    capture_content: str | bool | CaptureMode | None = None,
    semconv_compat: str | list[str] | tuple[str, ...] | None = None,
    enable_gpu: bool | None = None,
    enable_nccl: bool | None = None,
    metric_export_interval_ms: int | None = None,
    use_existing_providers: bool = True,
    environ: Mapping[str, str] | None = None,
) -> TelemetrySettings:
    """Combine ``init()`` arguments with the environment; raise ``ConfigurationError`` naming a bad value."""
    env = os.environ if environ is None else environ
    file = os.fspath(output_file) if output_file is not None else env.get(ENV_OUTPUT_FILE) or None
    common = dict(env=env, endpoint_arg=otlp_endpoint, protocol_arg=protocol, headers_arg=headers, output_file=file)
    traces = _signal("traces", signal_endpoint_arg=traces_endpoint, exporter_arg=traces_exporter, **common)  # type: ignore[arg-type]
    metrics = _signal("metrics", signal_endpoint_arg=metrics_endpoint, exporter_arg=metrics_exporter, **common)  # type: ignore[arg-type]

    if capture_content is not None:
        try:
            mode = parse_capture_mode(capture_content, source="init(capture_content=...)")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    else:
        try:
            mode = parse_capture_mode(env.get(ENV_CAPTURE_CONTENT))
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    interval = metric_export_interval_ms
    if interval is None:
        raw = env.get("OTEL_METRIC_EXPORT_INTERVAL")
        try:
            interval = int(raw) if raw else 60_000
        except ValueError:
            raise ConfigurationError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r} is not a number of milliseconds.") from None
    if interval <= 0:
        raise ConfigurationError(f"metric export interval {interval} ms must be a positive number of milliseconds.")

    name = service_name or env.get("OTEL_SERVICE_NAME") or "unknown_service"
    arg = env.get("OTEL_TRACES_SAMPLER_ARG") if sampler_arg is None else str(sampler_arg)
    return TelemetrySettings(
        service_name=name,
        service_version=service_version or env.get("OTEL_SERVICE_VERSION") or None,
        traces=traces,
        metrics=metrics,
        output_file=file,
        resource_attributes=dict(resource_attributes or {}),
        sampler=sampler if sampler is not None else env.get("OTEL_TRACES_SAMPLER") or None,
        sampler_arg=arg,
        capture_content=mode,
        semconv_compat=_compat(semconv_compat, env),
        enable_gpu=_bool(enable_gpu, env, ENV_ENABLE_GPU, False),
        enable_nccl=_bool(enable_nccl, env, ENV_ENABLE_NCCL, False),
        metric_export_interval_ms=interval,
        use_existing_providers=use_existing_providers,
        enabled=not _bool(None, env, "OTEL_SDK_DISABLED", False),
    )
