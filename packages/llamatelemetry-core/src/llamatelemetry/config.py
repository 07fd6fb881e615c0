"""Resolving ``init()`` arguments and environment variables into one settings record.

Precedence, highest first: an ``init()`` argument, a ``LLAMATELEMETRY_*`` variable, the standard
``OTEL_*`` variable, the default. Per-signal OTLP variables win over the general ones, as the
OpenTelemetry specification says.

Bad values, as the OpenTelemetry SDK treats them: an ``init()`` argument raises
``ConfigurationError`` naming the value and the expected form (the code that passed it can be
fixed); an environment variable that names a component which does not exist (an exporter, an
OTLP protocol) raises too, as the SDK's configurator does; any other malformed variable (an
endpoint, headers, a number, a boolean, a sampler) is logged as a warning and ignored, so a
variable set for a whole fleet never stops an application from starting.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Literal

import attrs

from llamatelemetry.errors import ConfigurationError
from llamatelemetry.semconv.content import ENV_CAPTURE_CONTENT, CaptureMode, parse_capture_mode

__all__ = ["TelemetrySettings", "PrometheusSettings", "resolve_settings", "parse_headers", "check_endpoint",
           "check_headers", "SEMCONV_COMPAT_OPTIONS", "Protocol", "Exporter"]

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
ENV_SHUTDOWN_TIMEOUT = "LLAMATELEMETRY_SHUTDOWN_TIMEOUT"
ENV_EXPORT_BUFFER_SIZE = "LLAMATELEMETRY_EXPORT_BUFFER_SIZE"
ENV_PROMETHEUS_PORT = "LLAMATELEMETRY_PROMETHEUS_PORT"
ENV_PROMETHEUS_HOST = "LLAMATELEMETRY_PROMETHEUS_HOST"
# The OTel SDK's own variables for its Prometheus exporter, read when OTEL_METRICS_EXPORTER=prometheus.
ENV_OTEL_PROMETHEUS_HOST = "OTEL_EXPORTER_PROMETHEUS_HOST"
ENV_OTEL_PROMETHEUS_PORT = "OTEL_EXPORTER_PROMETHEUS_PORT"
DEFAULT_OTEL_PROMETHEUS_PORT = 9464

DEFAULT_SHUTDOWN_TIMEOUT_S = 2.0
#: Spans, and separately metric data points: a 60 s outage at 50 spans/s is 3,000 spans.
DEFAULT_EXPORT_BUFFER_SIZE = 8192
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 60_000

log = logging.getLogger("llamatelemetry.config")

# RFC 9110 token characters: what a header name may hold (gRPC metadata keys are a subset once lowercased).
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^(\[[0-9A-Fa-f:.]+\]|{_LABEL}(\.{_LABEL})*\.?)$")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@attrs.frozen
class SignalSettings:
    """Where one signal (traces or metrics) goes."""

    exporter: Exporter
    # Shown without user info, query or a vendor's path: some vendors take the API key there.
    endpoint: str | None = attrs.field(default=None, repr=lambda value: repr(safe_endpoint(value)))
    protocol: Protocol = "grpc"
    # Headers carry API keys: kept out of repr so they never reach a log or an error message.
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    # True when init() arguments chose the exporter or endpoint (not only OTEL_* variables): on an
    # application's provider, configured from those same variables, only an explicit one is added.
    explicit: bool = False


@attrs.frozen
class PrometheusSettings:
    """Where ``init(prometheus_port=...)`` serves metrics for Prometheus to scrape."""

    host: str
    #: 0: any free port (the one bound is ``Telemetry.prometheus.port``).
    port: int
    #: What asked for it (``init(prometheus_port=...)`` or the variable): named in errors and warnings.
    source: str


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
    #: Seconds ``shutdown()`` (and interpreter exit) may spend delivering what is left.
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    #: Spans, and separately metric data points, held while the collector is unreachable.
    export_buffer_size: int = DEFAULT_EXPORT_BUFFER_SIZE
    #: A ``/metrics`` endpoint for Prometheus, beside the metrics exporter; ``None``: none.
    prometheus: PrometheusSettings | None = None

    def describe(self) -> str:
        """A one-paragraph, secret-free summary for logs and the CLI."""

        def where(signal: SignalSettings) -> str:
            if signal.exporter == "otlp":
                return f"OTLP {signal.protocol} to {safe_endpoint(signal.endpoint)}"
            if signal.exporter == "file":
                return f"file {self.output_file}"
            return signal.exporter

        scrape = (f" and Prometheus scrapes {self.prometheus.host}:{self.prometheus.port}"
                  if self.prometheus is not None else "")
        return (f"service {self.service_name!r}: traces -> {where(self.traces)}, "
                f"metrics -> {where(self.metrics)}{scrape}, content capture {self.capture_content.value}")


def safe_endpoint(endpoint: str | None) -> str:
    """``endpoint`` as logs may show it: scheme, host and port, and the path only when it is OTLP's own.

    Some vendors take an API key in the URL (user info, a query parameter, a path segment); none of
    those reach a log line or an error message.
    """
    if not endpoint:
        return "(none)"
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    host = parsed.hostname or "?"
    shown_host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parsed.port}" if parsed.port is not None else ""
    except ValueError:
        port = ""
    path = parsed.path if parsed.path in ("", "/", "/v1/traces", "/v1/metrics", "/v1/logs") else "/..."
    hidden = " (query hidden)" if parsed.query else ""
    scheme = f"{parsed.scheme}://" if parsed.scheme else ""
    return f"{scheme}{shown_host}{port}{path}{hidden}"


# The warnings of one resolve_settings() call, so a variable read for both signals is reported once.
_reported: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("llamatelemetry_config_reported",
                                                                           default=None)


def _ignore_env(name: str, shown: str, expected: str, fallback: str) -> None:
    reported = _reported.get()
    key = f"{name}={shown}"
    if reported is not None:
        if key in reported:
            return
        reported.add(key)
    log.warning("llamatelemetry ignores %s=%s: %s; using %s instead. (Malformed environment variables are "
                "reported and ignored, as the OpenTelemetry SDK does.)", name, shown, expected, fallback)


def _check_header(key: str, value: str, source: str, index: int | None = None) -> None:
    where = f"{source} entry {index + 1}" if index is not None else source
    if not _HEADER_NAME.match(key):
        raise ConfigurationError(
            f"{where} has header name {key!r}, which is not a header name: use letters, digits and - _ . only.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        # Name the header, never the value: it may be a secret.
        raise ConfigurationError(
            f"{where}: the value of header {key!r} contains a control character (a newline?); remove it.")


def parse_headers(value: str | None, *, source: str, strict: bool = True) -> dict[str, str]:
    """Parse ``key=value,key2=value2`` (values URL-encoded) as in ``OTEL_EXPORTER_OTLP_HEADERS``.

    ``strict=False`` (environment variables) warns about a malformed entry and skips it, as the
    OpenTelemetry SDK does; otherwise it raises ``ConfigurationError``. Messages never show a value.
    """
    headers: dict[str, str] = {}
    if not value:
        return headers
    for index, item in enumerate(value.split(",")):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        try:
            if not sep or not key.strip():
                # Name the position, never the value: it may be a secret.
                raise ConfigurationError(
                    f"{source} has an entry without 'key=value' form; write it as key=value,key2=value2.")
            name, decoded = urllib.parse.unquote(key.strip()).lower(), urllib.parse.unquote(raw.strip())
            _check_header(name, decoded, source, index)
        except ConfigurationError as exc:
            if strict:
                raise
            _ignore_env(source, f"<entry {index + 1}>", str(exc), "the other entries")
            continue
        headers[name] = decoded
    return headers


def _headers_arg(value: Mapping[str, str] | str, source: str) -> dict[str, str]:
    if isinstance(value, str):
        return parse_headers(value, source=source)
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{source} is a {type(value).__name__}: pass a dict such as "
                                 "{'authorization': 'Bearer ...'} or a 'key=value,key2=value2' string.")
    headers: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not isinstance(raw, str):
            raise ConfigurationError(f"{source} has header {key!r} with a {type(raw).__name__} value: names and "
                                     "values must be strings.")
        name = key.strip().lower()
        _check_header(name, raw, source)
        headers[name] = raw
    return headers


def _bool(value: bool | None, env: Mapping[str, str], name: str, default: bool, arg: str | None = None) -> bool:
    if value is not None:
        if not isinstance(value, bool):
            raise ConfigurationError(f"init({arg or name}={value!r}) is not a boolean: pass True or False.")
        return value
    raw = env.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    _ignore_env(name, repr(raw), "not a boolean (use true or false)", f"the default, {str(default).lower()}")
    return default


def _shown(endpoint: str) -> str:
    """``endpoint`` for an error message: user info and query replaced, as they may carry an API key."""
    shown = re.sub(r"(?<=://)[^/@?#]*@", "<user info>@", endpoint)
    return re.sub(r"\?.*$", "?<query>", shown) if "?" in shown else shown


def _check_endpoint(endpoint: str, source: str) -> str:
    form = "write it like http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP)"
    if not isinstance(endpoint, str):
        raise ConfigurationError(f"{source}={endpoint!r} is not an endpoint URL: {form}.")
    endpoint = endpoint.strip()
    shown = repr(_shown(endpoint))
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parsed.scheme and parsed.scheme not in ("http", "https"):
        raise ConfigurationError(f"{source}={shown} has scheme {parsed.scheme!r}: use http:// or https://.")
    host = parsed.netloc.rpartition("@")[2]
    host = host if host.startswith("[") else host.rsplit(":", 1)[0] if ":" in host else host
    if not parsed.hostname or not _HOST.match(host):
        raise ConfigurationError(f"{source}={shown} is not an endpoint URL: {form}.")
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigurationError(f"{source}={shown} has an invalid port: {form}.") from None
    return endpoint


def _guess_protocol(endpoint: str) -> Protocol:
    # Only when no protocol is configured: 4318 and /v1/<signal> paths are the OTLP/HTTP defaults.
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parsed.port == 4318 or parsed.path.rstrip("/").endswith(("/v1/traces", "/v1/metrics")):
        return "http/protobuf"
    return "grpc"


def _protocol(value: str | None, source: str) -> Protocol | None:
    # A protocol selects a component: like the SDK's configurator, an unknown one is an error even from a variable.
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{source}={value!r} is not an OTLP protocol: use 'grpc' or 'http/protobuf'.")
    if not value.strip():
        if source.startswith("init("):  # an empty variable is unset (as in the SDK); an empty argument is a mistake
            raise ConfigurationError(f"{source}={value!r} is not an OTLP protocol: use grpc or http/protobuf "
                                     "(or leave it out).")
        return None
    value = value.strip().lower()
    if value == "http/json":
        raise ConfigurationError(f"{source}='http/json' is not supported: use grpc or http/protobuf.")
    if value not in PROTOCOLS:
        raise ConfigurationError(f"{source}={value!r} is not an OTLP protocol: use grpc or http/protobuf.")
    return value  # type: ignore[return-value]


def check_endpoint(endpoint: str, source: str) -> str:
    """The endpoint URL, stripped; ``ConfigurationError`` naming ``source`` and the value when it is malformed."""
    return _check_endpoint(endpoint, source)


def check_headers(value: Mapping[str, str] | str, source: str) -> dict[str, str]:
    """Headers from a dict or a ``key=value,...`` string; ``ConfigurationError`` (no value shown) if malformed."""
    return _headers_arg(value, source)


def _env_endpoint(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        return _check_endpoint(raw, name)
    except ConfigurationError as exc:
        shown = repr(_shown(raw.strip()))
        reason = str(exc).removeprefix(f"{name}={shown} ")
        _ignore_env(name, shown, reason, "no endpoint from this variable")
        return None


def _signal(
    signal: Literal["traces", "metrics"],
    *,
    env: Mapping[str, str],
    endpoint_arg: str | None,
    signal_endpoint_arg: str | None,
    protocol_arg: str | None,
    headers_arg: Mapping[str, str] | str | None,
    exporter_arg: str | None,
    output_file: str | None,
) -> SignalSettings:
    upper = signal.upper()
    exporter_source = f"OTEL_{upper}_EXPORTER"
    exporter = exporter_arg if exporter_arg is not None else env.get(exporter_source)
    source = f"init({signal}_exporter=...)" if exporter_arg is not None else exporter_source
    if exporter is not None:
        if not isinstance(exporter, str):
            raise ConfigurationError(
                f"{source}={exporter!r} is not an exporter name: use one of {', '.join(EXPORTERS)}.")
        exporter = exporter.strip().lower().split(",")[0]
        if exporter not in EXPORTERS:
            raise ConfigurationError(f"{source}={exporter!r} is not supported: use one of {', '.join(EXPORTERS)}.")

    protocol = (_protocol(protocol_arg, "init(protocol=...)")
                or _protocol(env.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"), f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
                or _protocol(env.get("OTEL_EXPORTER_OTLP_PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"))

    # A signal endpoint is used as given; a base endpoint gets /v1/<signal> appended for HTTP.
    endpoint: str | None = None
    signal_env, base_env = f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
    if signal_endpoint_arg is not None:
        endpoint = _check_endpoint(signal_endpoint_arg, f"init({signal}_endpoint=...)")
        protocol = protocol or _guess_protocol(endpoint)
    elif endpoint_arg is not None:
        base = _check_endpoint(endpoint_arg, "init(otlp_endpoint=...)")
        protocol = protocol or _guess_protocol(base)
        endpoint = base if protocol == "grpc" else base.rstrip("/") + f"/v1/{signal}"
    elif (from_signal_env := _env_endpoint(env, signal_env)) is not None:
        endpoint = from_signal_env
        protocol = protocol or _guess_protocol(endpoint)
    elif (from_base_env := _env_endpoint(env, base_env)) is not None:
        protocol = protocol or _guess_protocol(from_base_env)
        endpoint = from_base_env if protocol == "grpc" else from_base_env.rstrip("/") + f"/v1/{signal}"
    if endpoint is not None and protocol == "http/protobuf" and "://" not in endpoint:
        endpoint = "http://" + endpoint  # the HTTP exporter needs a scheme; OTLP/HTTP without TLS is http://

    if exporter is None:
        exporter = "otlp" if endpoint else ("file" if output_file else "console")
    if exporter == "otlp" and endpoint is None:
        # OTEL_<SIGNAL>_EXPORTER=otlp without an endpoint: the specification's local default.
        protocol = protocol or "grpc"
        endpoint = DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else f"{DEFAULT_HTTP_ENDPOINT}/v1/{signal}"
    if exporter == "file" and not output_file:
        raise ConfigurationError(
            f"{source}=file needs a file: pass init(output_file=...) or set {ENV_OUTPUT_FILE}.")

    if headers_arg is not None:
        headers = _headers_arg(headers_arg, "init(headers=...)")
    else:
        headers = parse_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS"), source="OTEL_EXPORTER_OTLP_HEADERS",
                                strict=False)
        headers.update(parse_headers(env.get(f"OTEL_EXPORTER_OTLP_{upper}_HEADERS"),
                                     source=f"OTEL_EXPORTER_OTLP_{upper}_HEADERS", strict=False))
    explicit = exporter_arg is not None or signal_endpoint_arg is not None or endpoint_arg is not None
    return SignalSettings(exporter=exporter, endpoint=endpoint if exporter == "otlp" else None,  # type: ignore[arg-type]
                          protocol=protocol or "grpc", headers=headers, explicit=explicit)


def _compat(value: str | list[str] | tuple[str, ...] | None, env: Mapping[str, str]) -> frozenset[str]:
    if value is None:
        raw = env.get(ENV_SEMCONV_COMPAT, "")
        names = [v.strip().lower() for v in raw.split(",") if v.strip()]
        unknown = sorted(set(names) - set(SEMCONV_COMPAT_OPTIONS))
        if unknown:
            _ignore_env(ENV_SEMCONV_COMPAT, repr(raw), f"unknown option(s) {unknown} (use "
                        f"{', '.join(SEMCONV_COMPAT_OPTIONS)})", "the known options only")
        return frozenset(n for n in names if n in SEMCONV_COMPAT_OPTIONS)
    source = "init(semconv_compat=...)"
    if not isinstance(value, (str, list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(
            f"init(semconv_compat={value!r}) is invalid: pass 'deprecated', 'llm' or a list of them.")
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = sorted(set(names) - set(SEMCONV_COMPAT_OPTIONS))
    if unknown:
        raise ConfigurationError(f"{source} has unknown option(s) {unknown}: use {', '.join(SEMCONV_COMPAT_OPTIONS)}.")
    return frozenset(names)


def _number(
    value: float | None, env: Mapping[str, str], *, arg: str, var: str, default: float, unit: str,
    minimum: float, integer: bool,
) -> float:
    """An ``init()`` number (raises when bad) or a variable's (warns and takes the default when bad)."""
    kind = "whole number" if integer else "number"
    expected = f"a positive {kind} of {unit}" if minimum > 0 else f"a {kind} of {unit}, 0 or more"
    if value is not None:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value) or value < minimum:
            raise ConfigurationError(f"init({arg}={value!r}) is invalid: give {expected}.")
        return value
    raw = env.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        parsed = int(raw) if integer else float(raw)
    except ValueError:
        parsed = None
    if parsed is None or not math.isfinite(parsed) or parsed < minimum:
        _ignore_env(var, repr(raw), f"not {expected}", f"the default, {default:g}")
        return default
    return parsed


def _prometheus(port: int | None, host: str | None, env: Mapping[str, str]) -> PrometheusSettings | None:
    """The endpoint from ``init()`` (a bad value raises) or the variables (a malformed one warns and is ignored)."""
    from llamatelemetry.otel.prometheus import DEFAULT_HOST, valid_host

    port_form = "a TCP port number from 0 to 65535 (0: any free port), such as 9464"
    host_form = "a host name or IP address to listen on, such as localhost or 0.0.0.0"
    if host is not None and (not isinstance(host, str) or not valid_host(host.strip())):
        raise ConfigurationError(f"init(prometheus_host={host!r}) is invalid: give {host_form}.")
    if host is None:
        raw_host = env.get(ENV_PROMETHEUS_HOST)
        if raw_host is not None and raw_host.strip() and not valid_host(raw_host.strip()):
            _ignore_env(ENV_PROMETHEUS_HOST, repr(raw_host), f"not {host_form}", f"the default, {DEFAULT_HOST}")
            raw_host = None
        host = (raw_host or "").strip() or DEFAULT_HOST
    host = host.strip()
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"init(prometheus_port={port!r}) is invalid: give {port_form}.")
        return PrometheusSettings(host=host, port=port, source="init(prometheus_port=...)")
    raw = env.get(ENV_PROMETHEUS_PORT)
    if raw is None or not raw.strip():
        return None
    try:
        parsed: int | None = int(raw.strip())
    except ValueError:
        parsed = None
    if parsed is None or not 0 <= parsed <= 65535:
        _ignore_env(ENV_PROMETHEUS_PORT, repr(raw), f"not {port_form}", "no Prometheus endpoint")
        return None
    return PrometheusSettings(host=host, port=parsed, source=ENV_PROMETHEUS_PORT)


def _otel_prometheus(env: Mapping[str, str], source: str) -> PrometheusSettings:
    """The scrape endpoint of the OTel SDK's own variables (``localhost:9464`` by default); malformed ones warn."""
    from llamatelemetry.otel.prometheus import DEFAULT_HOST, valid_host

    host = (env.get(ENV_OTEL_PROMETHEUS_HOST) or "").strip() or DEFAULT_HOST
    if not valid_host(host):
        _ignore_env(ENV_OTEL_PROMETHEUS_HOST, repr(host), "not a host name or IP address to listen on",
                    f"the default, {DEFAULT_HOST}")
        host = DEFAULT_HOST
    raw = (env.get(ENV_OTEL_PROMETHEUS_PORT) or "").strip()
    port = DEFAULT_OTEL_PROMETHEUS_PORT
    if raw:
        try:
            port = int(raw)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            _ignore_env(ENV_OTEL_PROMETHEUS_PORT, repr(raw), "not a TCP port number from 0 to 65535",
                        f"the default, {DEFAULT_OTEL_PROMETHEUS_PORT}")
            port = DEFAULT_OTEL_PROMETHEUS_PORT
    return PrometheusSettings(host=host, port=port, source=source)


def _sampler(name: str | None, arg: str | float | None, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    from llamatelemetry.otel.sampling import SAMPLER_NAMES, check_ratio

    if name is not None:
        if not isinstance(name, str) or name.strip().lower() not in SAMPLER_NAMES:
            raise ConfigurationError(f"init(sampler={name!r}) is not a sampler: use one of {', '.join(SAMPLER_NAMES)}.")
        name = name.strip().lower()
    else:
        raw = env.get("OTEL_TRACES_SAMPLER") or None
        name = raw.strip().lower() if raw else None
        if name is not None and name not in SAMPLER_NAMES:
            _ignore_env("OTEL_TRACES_SAMPLER", repr(raw), f"not a sampler (use one of {', '.join(SAMPLER_NAMES)})",
                        "the default, parentbased_always_on")
            name = None
    ratio_based = name in ("traceidratio", "parentbased_traceidratio")
    if arg is not None:
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            raise ConfigurationError(
                f"init(sampler_arg={arg!r}) is not a number: give a sampling ratio between 0 and 1.")
        if ratio_based:
            check_ratio(arg, "init(sampler_arg=...)")
        return name, str(arg)
    raw_arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    if raw_arg is not None and ratio_based:
        try:
            check_ratio(raw_arg, "OTEL_TRACES_SAMPLER_ARG")
        except ConfigurationError as exc:
            _ignore_env("OTEL_TRACES_SAMPLER_ARG", repr(raw_arg), str(exc), "the default ratio, 1.0")
            raw_arg = None
    return name, raw_arg


def resolve_settings(
    *,
    service_name: str | None = None,
    service_version: str | None = None,
    otlp_endpoint: str | None = None,
    traces_endpoint: str | None = None,
    metrics_endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | str | None = None,
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
    shutdown_timeout: float | None = None,
    export_buffer_size: int | None = None,
    prometheus_port: int | None = None,
    prometheus_host: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TelemetrySettings:
    """Combine ``init()`` arguments with the environment; raise ``ConfigurationError`` naming a bad argument.

    A malformed environment variable is logged as a warning and ignored (see the module docstring).
    """
    token = _reported.set(set())
    try:
        return _resolve(
            env=os.environ if environ is None else environ, service_name=service_name, service_version=service_version,
            otlp_endpoint=otlp_endpoint, traces_endpoint=traces_endpoint, metrics_endpoint=metrics_endpoint,
            protocol=protocol, headers=headers, traces_exporter=traces_exporter, metrics_exporter=metrics_exporter,
            output_file=output_file, resource_attributes=resource_attributes, sampler=sampler,
            sampler_arg=sampler_arg, capture_content=capture_content, semconv_compat=semconv_compat,
            enable_gpu=enable_gpu, enable_nccl=enable_nccl, metric_export_interval_ms=metric_export_interval_ms,
            use_existing_providers=use_existing_providers, shutdown_timeout=shutdown_timeout,
            export_buffer_size=export_buffer_size, prometheus_port=prometheus_port, prometheus_host=prometheus_host,
        )
    finally:
        _reported.reset(token)


def _resolve(
    *,
    env: Mapping[str, str],
    service_name: str | None,
    service_version: str | None,
    otlp_endpoint: str | None,
    traces_endpoint: str | None,
    metrics_endpoint: str | None,
    protocol: str | None,
    headers: Mapping[str, str] | str | None,
    traces_exporter: str | None,
    metrics_exporter: str | None,
    output_file: str | os.PathLike[str] | None,
    resource_attributes: Mapping[str, object] | None,
    sampler: str | None,
    sampler_arg: str | float | None,
    capture_content: str | bool | CaptureMode | None,
    semconv_compat: str | list[str] | tuple[str, ...] | None,
    enable_gpu: bool | None,
    enable_nccl: bool | None,
    metric_export_interval_ms: int | None,
    use_existing_providers: bool,
    shutdown_timeout: float | None,
    export_buffer_size: int | None,
    prometheus_port: int | None,
    prometheus_host: str | None,
) -> TelemetrySettings:
    for option, given in (("service_name", service_name), ("service_version", service_version)):
        if given is not None and (not isinstance(given, str) or not given.strip()):
            raise ConfigurationError(f"init({option}={given!r}) is invalid: give a non-empty string (or leave it out).")
    if output_file is not None and not isinstance(output_file, (str, os.PathLike)):
        raise ConfigurationError(f"init(output_file={output_file!r}) is invalid: give a file path (str or Path).")
    if resource_attributes is not None and not isinstance(resource_attributes, Mapping):
        raise ConfigurationError(f"init(resource_attributes={resource_attributes!r}) is invalid: give a dict such "
                                 "as {'deployment.environment': 'prod'}.")
    file = os.fspath(output_file) if output_file is not None else env.get(ENV_OUTPUT_FILE) or None
    common = dict(env=env, endpoint_arg=otlp_endpoint, protocol_arg=protocol, headers_arg=headers, output_file=file)
    traces = _signal("traces", signal_endpoint_arg=traces_endpoint, exporter_arg=traces_exporter, **common)  # type: ignore[arg-type]
    # OTEL_METRICS_EXPORTER=prometheus (or metrics_exporter="prometheus"), the SDK's standard way to ask
    # for the pull exporter: no push exporter, and a scrape endpoint as the OTel SDK would serve it.
    asked = metrics_exporter if metrics_exporter is not None else env.get("OTEL_METRICS_EXPORTER")
    pull_source: str | None = None
    if isinstance(asked, str) and asked.strip().lower().split(",")[0] == "prometheus":
        pull_source = ("init(metrics_exporter='prometheus')" if metrics_exporter is not None
                       else "OTEL_METRICS_EXPORTER=prometheus")
        metrics_exporter = "none"
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
            _ignore_env(ENV_CAPTURE_CONTENT, repr(env.get(ENV_CAPTURE_CONTENT)), str(exc),
                        "the default, NO_CONTENT")
            mode = CaptureMode.NO_CONTENT

    interval = int(_number(metric_export_interval_ms, env, arg="metric_export_interval_ms",
                           var="OTEL_METRIC_EXPORT_INTERVAL", default=DEFAULT_METRIC_EXPORT_INTERVAL_MS,
                           unit="milliseconds", minimum=1, integer=True))
    shutdown_s = _number(shutdown_timeout, env, arg="shutdown_timeout", var=ENV_SHUTDOWN_TIMEOUT,
                         default=DEFAULT_SHUTDOWN_TIMEOUT_S, unit="seconds", minimum=0, integer=False)
    buffer_size = int(_number(export_buffer_size, env, arg="export_buffer_size", var=ENV_EXPORT_BUFFER_SIZE,
                              default=DEFAULT_EXPORT_BUFFER_SIZE, unit="items", minimum=1, integer=True))
    sampler_name, arg = _sampler(sampler, sampler_arg, env)
    prometheus = _prometheus(prometheus_port, prometheus_host, env)
    if prometheus is None and pull_source is not None:
        prometheus = _otel_prometheus(env, pull_source)
    if (prometheus is not None and metrics.exporter == "console" and metrics_exporter is None
            and not env.get("OTEL_METRICS_EXPORTER")):
        # Console was only the fallback for "no destination": Prometheus is one, so stderr stays quiet.
        metrics = attrs.evolve(metrics, exporter="none")

    name = service_name or env.get("OTEL_SERVICE_NAME") or "unknown_service"
    return TelemetrySettings(
        service_name=name,
        service_version=service_version or env.get("OTEL_SERVICE_VERSION") or None,
        traces=traces,
        metrics=metrics,
        output_file=file,
        resource_attributes=dict(resource_attributes or {}),
        sampler=sampler_name,
        sampler_arg=arg,
        capture_content=mode,
        semconv_compat=_compat(semconv_compat, env),
        enable_gpu=_bool(enable_gpu, env, ENV_ENABLE_GPU, False, "enable_gpu"),
        enable_nccl=_bool(enable_nccl, env, ENV_ENABLE_NCCL, False, "enable_nccl"),
        metric_export_interval_ms=interval,
        use_existing_providers=use_existing_providers,
        enabled=not _bool(None, env, "OTEL_SDK_DISABLED", False),
        shutdown_timeout_s=shutdown_s,
        export_buffer_size=buffer_size,
        prometheus=prometheus,
    )
