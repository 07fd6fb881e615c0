"""``init()`` and ``shutdown()``: the providers llamatelemetry owns, and the one live telemetry handle."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from llamatelemetry._version import __version__
from llamatelemetry.config import TelemetrySettings, resolve_settings
from llamatelemetry.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.trace import Tracer, TracerProvider

    from llamatelemetry.otel.export import ExportStats, QueueingSpanProcessor
    from llamatelemetry.otel.prometheus import PrometheusEndpoint
    from llamatelemetry.otel.retry import RetryingMetricExporter, RetryingSpanExporter, RetryPolicy
    from llamatelemetry.semconv.content import CaptureMode
    from llamatelemetry.semconv.metrics import GenAIMetrics

__all__ = ["Telemetry", "init", "shutdown", "current", "get_tracer", "get_meter", "genai_metrics", "cached_instruments"]

log = logging.getLogger("llamatelemetry")

_T = TypeVar("_T")

INSTRUMENTATION_NAME = "llamatelemetry"


@attrs.define(eq=False)
class Telemetry:
    """What ``init()`` set up. ``shutdown()`` flushes and releases it; calling it twice is harmless."""

    settings: TelemetrySettings
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    owns_tracer_provider: bool
    owns_meter_provider: bool
    span_processor: QueueingSpanProcessor | None
    export_stats: ExportStats
    tracer: Tracer
    meter: Meter
    metrics: GenAIMetrics
    is_shut_down: bool = False
    #: Metric data points: exported, dropped, undelivered (``export_stats`` counts spans).
    metric_export_stats: ExportStats | None = None
    span_retry: RetryingSpanExporter | None = None
    metric_retry: RetryingMetricExporter | None = None
    #: The ``/metrics`` endpoint of ``init(prometheus_port=...)`` (``.url``, ``.port``), else ``None``.
    prometheus: PrometheusEndpoint | None = None
    #: The plugins ``init(plugins=...)`` registered; ``shutdown()`` unregisters them, so a later
    #: ``init()`` without them does not keep running their hooks.
    init_plugins: list[object] = attrs.field(factory=list)
    _deadline: float | None = attrs.field(default=None, init=False)

    @property
    def capture_content(self) -> CaptureMode:
        """Where prompt and completion content is recorded (NO_CONTENT unless opted in)."""
        return self.settings.capture_content

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export everything pending now."""
        ok = True
        if self.span_processor is not None:
            ok = self.span_processor.force_flush(timeout_millis) and ok
        if self.owns_tracer_provider:
            ok = bool(self.tracer_provider.force_flush(timeout_millis)) and ok  # type: ignore[attr-defined]
        if hasattr(self.meter_provider, "force_flush"):
            ok = bool(self.meter_provider.force_flush(timeout_millis)) and ok
        return ok

    def shutdown(self) -> None:
        """Stop plugins' background work, flush, and shut down the providers llamatelemetry created.

        Delivery of what is still buffered is bounded by ``settings.shutdown_timeout_s`` (default
        2 s) whatever the collector does; what could not be delivered is counted and reported in one
        log line (a warning when anything was lost).
        """
        with _lock:
            if self.is_shut_down:
                return
            self.is_shut_down = True
        # One deadline for both signals, so an unreachable collector costs the timeout once, not per signal.
        deadline = self._deadline = time.monotonic() + self.settings.shutdown_timeout_s
        for part in (self.span_processor, self.span_retry, self.metric_retry):
            if part is not None:
                part.set_deadline(deadline)
        from llamatelemetry.plugins import get_plugin_manager

        try:
            get_plugin_manager().telemetry_shutdown(self.settings)
        except Exception:  # the hook caller isolates plugins; this guards the manager itself
            log.warning("llamatelemetry plugin shutdown failed", exc_info=True)
        for action, what in (
            (self._shutdown_traces, "traces"),
            (self._shutdown_metrics, "metrics"),
        ):
            try:
                action()
            except Exception:
                log.warning("llamatelemetry failed to flush %s at shutdown", what, exc_info=True)
        for retry in (self.span_retry, self.metric_retry):
            if retry is not None:  # already closed by its provider, unless the provider gave up early
                retry.buffer.close(deadline)
        self._report()
        for plugin in self.init_plugins:
            try:
                if get_plugin_manager().is_registered(plugin):
                    get_plugin_manager().unregister(plugin)
            except Exception:
                log.warning("llamatelemetry could not unregister plugin %r at shutdown", plugin, exc_info=True)
        global _current
        with _lock:
            if _current is self:
                _current = None

    def _report(self) -> None:
        # One line for the whole export path; a warning when anything was lost, else for -v logs only.
        parts = []
        lost = False
        for signal, stats, unit in (("traces", self.export_stats if self.span_processor is not None else None, "spans"),
                                    ("metrics", self.metric_export_stats, "points")):
            if stats is None:
                continue
            lost = lost or bool(stats.dropped or stats.undelivered)
            parts.append(f"{signal}: {stats.exported} {unit} exported, {stats.dropped} dropped, "
                         f"{stats.undelivered} undelivered")
        if parts:
            log.log(logging.WARNING if lost else logging.INFO, "llamatelemetry export report: %s", "; ".join(parts))

    def _shutdown_traces(self) -> None:
        if self.owns_tracer_provider:
            self.tracer_provider.shutdown()  # type: ignore[attr-defined]  # also shuts our processor
        elif self.span_processor is not None:
            self.span_processor.shutdown()

    def _shutdown_metrics(self) -> None:
        if self.owns_meter_provider:
            left = self._deadline - time.monotonic() if self._deadline is not None else self.settings.shutdown_timeout_s
            try:
                # A floor, so the reader still runs its last collection (into the buffer) and closes its exporter.
                self.meter_provider.shutdown(timeout_millis=1000 * max(left, 0.05))  # type: ignore[attr-defined]
            finally:
                if self.prometheus is not None:  # release the port even if a reader failed to shut down
                    left = self._deadline - time.monotonic() if self._deadline is not None else 1.0
                    self.prometheus.close(timeout_s=max(left, 0.1))


_lock = threading.RLock()
_current: Telemetry | None = None
# Set on providers llamatelemetry created, so a later init() never takes one for the application's.
_OWNED_MARK = "_llamatelemetry_owned"
_atexit_registered = False


def current() -> Telemetry | None:
    """The live telemetry handle, or ``None`` before ``init()`` and after ``shutdown()``."""
    return _current


def _app_tracer_provider() -> Any | None:
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider) or getattr(provider, _OWNED_MARK, False):
        return None
    return provider


def _app_meter_provider() -> Any | None:
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - layout of older API versions
        return None if type(provider).__name__ == "_ProxyMeterProvider" else provider
    if isinstance(provider, _ProxyMeterProvider) or getattr(provider, _OWNED_MARK, False):
        return None
    return provider


def _global_unset(provider: Any) -> bool:
    # OpenTelemetry lets the global provider be set once per process; only a proxy means "not set yet".
    return type(provider).__name__ in ("ProxyTracerProvider", "_ProxyMeterProvider")


def _build_resource(settings: TelemetrySettings, plugin_attributes: Mapping[str, Any]) -> Any:
    from opentelemetry.sdk.resources import Resource

    explicit: dict[str, Any] = {
        "telemetry.distro.name": "llamatelemetry",
        "telemetry.distro.version": __version__,
    }
    # service.name only when it was really given, so OTEL_RESOURCE_ATTRIBUTES' service.name still counts.
    env_names_service = "service.name" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if settings.service_name != "unknown_service" or not env_names_service:
        explicit["service.name"] = settings.service_name
    if settings.service_version:
        explicit["service.version"] = settings.service_version
    explicit.update(settings.resource_attributes)
    # Plugins' attributes rank lowest: OTEL_RESOURCE_ATTRIBUTES and init() arguments override them.
    return Resource(dict(plugin_attributes)).merge(Resource.create(explicit))


def init(
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    enable_gpu: bool | None = None,
    enable_nccl: bool | None = None,
    service_version: str | None = None,
    *,
    traces_endpoint: str | None = None,
    metrics_endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | str | None = None,
    traces_exporter: str | None = None,
    metrics_exporter: str | None = None,
    output_file: str | os.PathLike[str] | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    sampler: str | None = None,
    sampler_arg: str | float | None = None,
    capture_content: str | bool | CaptureMode | None = None,
    semconv_compat: str | list[str] | tuple[str, ...] | None = None,
    metric_export_interval_ms: int | None = None,
    use_existing_providers: bool = True,
    plugins: Iterable[object] = (),
    span_queue_size: int = 8192,
    metric_readers: Iterable[MetricReader] = (),
    span_processors: Iterable[Any] = (),
    set_global_providers: bool = True,
    shutdown_timeout: float | None = None,
    export_buffer_size: int | None = None,
    export_retry: RetryPolicy | None = None,
    prometheus_port: int | None = None,
    prometheus_host: str | None = None,
) -> Telemetry:
    """Set up tracing and metrics for LLM inference and return the telemetry handle.

    With no endpoint (argument or ``OTEL_EXPORTER_OTLP_*ENDPOINT``), telemetry goes to the
    console (stderr), or to ``output_file`` as JSON lines. Providers the application already set
    are used, not replaced, unless ``use_existing_providers=False``. Calling ``init()`` again
    while initialized returns the live handle unchanged (call ``shutdown()`` first to change
    settings). See the configuration docs for every argument and variable.

    A bad argument raises ``ConfigurationError`` naming it and the expected form. OTLP exports
    are buffered (``export_buffer_size`` spans, and as many metric points) and retried with
    backoff (``export_retry``) while the collector is unreachable; ``shutdown()`` and interpreter
    exit wait at most ``shutdown_timeout`` seconds (default 2) for the rest. ``prometheus_port``
    also serves the metrics at ``http://<prometheus_host>:<port>/metrics`` for Prometheus to scrape
    (needs ``llamatelemetry-core[prometheus]``; port 0 picks a free one, see ``Telemetry.prometheus``).
    """
    global _current, _atexit_registered
    settings = resolve_settings(
        service_name=service_name, service_version=service_version, otlp_endpoint=otlp_endpoint,
        traces_endpoint=traces_endpoint, metrics_endpoint=metrics_endpoint, protocol=protocol,
        headers=headers, traces_exporter=traces_exporter, metrics_exporter=metrics_exporter,
        output_file=output_file, resource_attributes=resource_attributes, sampler=sampler,
        sampler_arg=sampler_arg, capture_content=capture_content, semconv_compat=semconv_compat,
        enable_gpu=enable_gpu, enable_nccl=enable_nccl, metric_export_interval_ms=metric_export_interval_ms,
        use_existing_providers=use_existing_providers, shutdown_timeout=shutdown_timeout,
        export_buffer_size=export_buffer_size, prometheus_port=prometheus_port, prometheus_host=prometheus_host,
    )
    if isinstance(span_queue_size, bool) or not isinstance(span_queue_size, int) or span_queue_size < 1:
        raise ConfigurationError(f"init(span_queue_size={span_queue_size!r}) is invalid: give a positive whole "
                                 "number of spans (default 8192).")
    if export_retry is not None:
        from llamatelemetry.otel.retry import RetryPolicy as _RetryPolicy

        if not isinstance(export_retry, _RetryPolicy):
            raise ConfigurationError(f"init(export_retry={export_retry!r}) is invalid: pass a "
                                     "llamatelemetry.otel.retry.RetryPolicy(...) or None.")
    from llamatelemetry.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.ensure_loaded()
    with _lock:
        added = []
        for plugin in plugins:
            if not pm.is_registered(plugin):
                pm.register(plugin)
                added.append(plugin)
        if _current is not None:
            log.warning("llamatelemetry.init() called again while initialized; keeping the existing "
                        "telemetry (call llamatelemetry.shutdown() first to change its settings)")
            _current.init_plugins.extend(added)
            return _current
        try:
            telemetry = _start(settings, pm, span_queue_size, tuple(metric_readers), tuple(span_processors),
                               set_global_providers, export_retry)
        except BaseException:
            for plugin in added:
                pm.unregister(plugin)
            raise
        telemetry.init_plugins.extend(added)
        _current = telemetry
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
    if settings.enable_nccl:
        from llamatelemetry.plugins.extras import why_unavailable

        # Which plugin serves enable_nccl is data in the core's packaging metadata, not a name here.
        problem = why_unavailable("init:enable_nccl", "init(enable_nccl=True)")
        if problem is not None:
            log.warning(problem)
    pm.telemetry_start(settings, telemetry.tracer_provider, telemetry.meter_provider)
    log.info("llamatelemetry initialized: %s", settings.describe())
    return telemetry


def _start(settings: TelemetrySettings, pm: Any, queue_size: int, readers: tuple[Any, ...],
           processors: tuple[Any, ...], set_global: bool, retry_policy: RetryPolicy | None) -> Telemetry:
    started: list[PrometheusEndpoint] = []
    try:
        return _start_providers(settings, pm, queue_size, readers, processors, set_global, retry_policy, started)
    except BaseException:
        # A later step failed (an application's provider that takes no processors...): free the port too.
        for endpoint in started:
            endpoint.close(timeout_s=1.0)
        raise


def _start_providers(settings: TelemetrySettings, pm: Any, queue_size: int, readers: tuple[Any, ...],
                     processors: tuple[Any, ...], set_global: bool, retry_policy: RetryPolicy | None,
                     started: list[PrometheusEndpoint]) -> Telemetry:
    from opentelemetry import metrics as metrics_api
    from opentelemetry import trace as trace_api
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from llamatelemetry.otel.export import ExportStats, PluginSpanExporter, QueueingSpanProcessor
    from llamatelemetry.otel.exporters import build_metric_exporter, build_span_exporter
    from llamatelemetry.otel.retry import RetryingMetricExporter, RetryingSpanExporter, RetryPolicy
    from llamatelemetry.otel.sampling import configure_sampler
    from llamatelemetry.semconv import gen_ai
    from llamatelemetry.semconv.metrics import GenAIMetrics

    stats = ExportStats()
    metric_stats = ExportStats()
    policy = retry_policy or RetryPolicy()
    if not settings.enabled:
        # OTEL_SDK_DISABLED=true: no-op providers, nothing exported, nothing made global.
        noop_tp, noop_mp = trace_api.NoOpTracerProvider(), metrics_api.NoOpMeterProvider()
        noop_meter = noop_mp.get_meter(INSTRUMENTATION_NAME)
        return Telemetry(
            settings=settings, tracer_provider=noop_tp, meter_provider=noop_mp, owns_tracer_provider=False,
            owns_meter_provider=False, span_processor=None, export_stats=stats,
            tracer=noop_tp.get_tracer(INSTRUMENTATION_NAME), meter=noop_meter, metrics=GenAIMetrics.create(noop_meter),
        )
    resource = _build_resource(settings, pm.resource_attributes(settings))
    app_mp = _app_meter_provider() if settings.use_existing_providers else None
    # First, so a missing package or a taken port fails init() before any provider exists.
    prometheus = _start_prometheus(settings, app_mp) if settings.prometheus is not None else None
    if prometheus is not None:
        started.append(prometheus)

    # ---- traces
    app_tp = _app_tracer_provider() if settings.use_existing_providers else None
    span_processor: QueueingSpanProcessor | None = None
    exporter_kind = settings.traces.exporter
    # On an application's provider, add an exporter only when init()'s arguments asked for one (or
    # for llamatelemetry's own output file). That provider was configured from the same OTEL_*
    # variables (opentelemetry-instrument's distro sets OTEL_TRACES_EXPORTER=otlp): exporting what
    # those variables say a second time would send every span twice.
    if app_tp is not None and exporter_kind != "file" and not settings.traces.explicit:
        if exporter_kind not in ("none", "console"):
            log.info("llamatelemetry uses the application's TracerProvider and its exporters; the OTEL_* "
                     "exporter variables configure that provider, so llamatelemetry adds no second "
                     "%s exporter (pass init(otlp_endpoint=...) or traces_exporter=... to add one)", exporter_kind)
        exporter_kind = "none"
    span_exporter = build_span_exporter(
        exporter_kind, endpoint=settings.traces.endpoint, protocol=settings.traces.protocol,
        headers=settings.traces.headers, output_file=settings.output_file, timeout_s=policy.timeout_s,
        retry=False,
    )
    span_retry: RetryingSpanExporter | None = None
    if span_exporter is not None:
        if exporter_kind == "otlp":
            # The network can fail: buffer and retry here (the OTLP exporter makes one attempt per send).
            span_retry = RetryingSpanExporter(span_exporter, stats, buffer_size=settings.export_buffer_size,
                                              policy=policy, shutdown_timeout_s=settings.shutdown_timeout_s)
        span_processor = QueueingSpanProcessor(
            PluginSpanExporter(span_retry or span_exporter, pm, stats), max_queue_size=queue_size, stats=stats,
            shutdown_timeout_s=settings.shutdown_timeout_s, report_at_shutdown=False,
            exporter_counts=span_retry is not None,
        )
    if app_tp is not None:
        tracer_provider, owns_tp = app_tp, False
        if span_processor is not None or processors:
            if not hasattr(app_tp, "add_span_processor"):
                raise ConfigurationError(
                    "The application's TracerProvider cannot take span processors, so llamatelemetry cannot "
                    "export to the endpoint given to init(); pass use_existing_providers=False.")
            for processor in (span_processor, *processors):
                if processor is not None:
                    app_tp.add_span_processor(processor)
    else:
        sampler = configure_sampler(settings.sampler or "parentbased_always_on", settings.sampler_arg)
        # shutdown_on_exit=False: our own atexit handler shuts down within the deadline, once for both signals.
        tracer_provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        setattr(tracer_provider, _OWNED_MARK, True)
        owns_tp = True
        for processor in (span_processor, *processors):
            if processor is not None:
                tracer_provider.add_span_processor(processor)
        if set_global and _global_unset(trace_api.get_tracer_provider()):
            trace_api.set_tracer_provider(tracer_provider)

    # ---- metrics
    metric_retry: RetryingMetricExporter | None = None
    metric_kind = settings.metrics.exporter
    if app_mp is not None:
        meter_provider, owns_mp = app_mp, False
        if metric_kind in ("otlp", "file") or readers:
            log.info("llamatelemetry uses the application's MeterProvider; its readers decide where metrics go "
                     "(pass use_existing_providers=False to export metrics with llamatelemetry's settings)")
    else:
        all_readers = list(readers)
        if prometheus is not None:
            all_readers.append(prometheus.reader)
        metric_exporter = build_metric_exporter(
            metric_kind, endpoint=settings.metrics.endpoint, protocol=settings.metrics.protocol,
            headers=settings.metrics.headers, output_file=settings.output_file, timeout_s=policy.timeout_s,
            retry=False,
        )
        if metric_exporter is not None:
            if metric_kind == "otlp":
                metric_retry = RetryingMetricExporter(
                    metric_exporter, metric_stats, buffer_size=settings.export_buffer_size, policy=policy,
                    shutdown_timeout_s=settings.shutdown_timeout_s)
                metric_exporter = metric_retry
            all_readers.append(PeriodicExportingMetricReader(
                metric_exporter, export_interval_millis=settings.metric_export_interval_ms))
        meter_provider = MeterProvider(resource=resource, metric_readers=all_readers, shutdown_on_exit=False)
        setattr(meter_provider, _OWNED_MARK, True)
        owns_mp = True
        if set_global and _global_unset(metrics_api.get_meter_provider()):
            metrics_api.set_meter_provider(meter_provider)

    tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__, schema_url=gen_ai.SCHEMA_URL)
    meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__, schema_url=gen_ai.SCHEMA_URL)
    _create_pipeline_metrics(meter, stats, metric_stats)
    return Telemetry(
        settings=settings, tracer_provider=tracer_provider, meter_provider=meter_provider,
        owns_tracer_provider=owns_tp, owns_meter_provider=owns_mp, span_processor=span_processor,
        export_stats=stats, tracer=tracer, meter=meter, metrics=GenAIMetrics.create(meter),
        metric_export_stats=metric_stats if metric_retry is not None else None, span_retry=span_retry,
        metric_retry=metric_retry, prometheus=prometheus,
    )


def _start_prometheus(settings: TelemetrySettings, app_mp: Any | None) -> PrometheusEndpoint | None:
    # An init() argument that cannot be honoured raises; a variable (set for a whole fleet) only warns.
    from llamatelemetry.otel.prometheus import start_prometheus_endpoint

    wanted = settings.prometheus
    assert wanted is not None
    explicit = wanted.source.startswith("init(")
    if app_mp is not None:
        message = (f"{wanted.source} asks for a Prometheus endpoint, but llamatelemetry uses the application's "
                   "MeterProvider, which cannot take another reader once built: add "
                   "opentelemetry.exporter.prometheus.PrometheusMetricReader to that provider, or pass "
                   "init(use_existing_providers=False).")
        if explicit:
            raise ConfigurationError(message)
        log.warning("%s", message)
        return None
    try:
        return start_prometheus_endpoint(wanted.host, wanted.port)
    except OSError as exc:
        message = (f"{wanted.source}: cannot serve metrics for Prometheus on {wanted.host}:{wanted.port} ({exc}); "
                   "pick a free port (0 lets the system choose) or a host of this machine.")
        if explicit:
            raise ConfigurationError(message) from exc
        log.warning("%s Metrics are not served for Prometheus.", message)
        return None


def _create_pipeline_metrics(meter: Meter, stats: ExportStats, metric_stats: ExportStats) -> None:
    from opentelemetry.metrics import CallbackOptions, Observation

    from llamatelemetry.otel.retry import EXPORT_DROPPED
    from llamatelemetry.semconv import llamatelemetry as names

    def counter(name: str, field: str, description: str) -> None:
        def observe(options: CallbackOptions) -> list[Observation]:
            return [Observation(getattr(stats, field))]

        meter.create_observable_counter(name, callbacks=[observe], unit="{span}", description=description)

    counter(names.TELEMETRY_SPANS_EXPORTED, "exported", "Spans llamatelemetry exported.")
    counter(names.TELEMETRY_SPANS_DROPPED, "dropped", "Spans dropped because the export queue was full.")
    counter(names.TELEMETRY_EXPORT_FAILURES, "failed", "Spans the exporter failed to send.")

    def dropped(options: CallbackOptions) -> list[Observation]:
        # Read at each collection, so counts from an outage go out with the first export after it.
        return [Observation(count, {"signal": signal, "reason": reason})
                for signal, source in (("traces", stats), ("metrics", metric_stats))
                for reason, count in sorted(source.dropped_by_reason.items())]

    meter.create_observable_counter(EXPORT_DROPPED, callbacks=[dropped], unit="{item}",
                                    description="Spans (signal=traces) and metric data points (signal=metrics) "
                                                "the export path dropped, by reason.")


def shutdown() -> None:
    """Flush and release what ``init()`` set up; idempotent and safe at interpreter exit."""
    telemetry = _current
    if telemetry is not None:
        telemetry.shutdown()


def _shutdown_at_exit() -> None:
    try:
        shutdown()
    except Exception:  # at exit, logging may already be gone: never raise into the interpreter
        pass


# ------------------------------------------------------------------ tracers and meters

_fallback: dict[str, Any] = {}


def get_tracer(name: str = INSTRUMENTATION_NAME, version: str | None = None) -> Tracer:
    """A tracer from llamatelemetry's provider after ``init()``, else from the global provider."""
    telemetry = _current
    if telemetry is not None:
        if name == INSTRUMENTATION_NAME and version is None:
            return telemetry.tracer
        return telemetry.tracer_provider.get_tracer(name, version)
    from opentelemetry import trace

    return trace.get_tracer(name, version or (__version__ if name == INSTRUMENTATION_NAME else None))


def get_meter(name: str = INSTRUMENTATION_NAME, version: str | None = None) -> Meter:
    """A meter from llamatelemetry's provider after ``init()``, else from the global provider."""
    telemetry = _current
    if telemetry is not None:
        if name == INSTRUMENTATION_NAME and version is None:
            return telemetry.meter
        return telemetry.meter_provider.get_meter(name, version)
    from opentelemetry import metrics

    return metrics.get_meter(name, version or (__version__ if name == INSTRUMENTATION_NAME else ""))


_instrument_cache: dict[str, tuple[Any, Any]] = {}


def cached_instruments(key: str, create: Callable[[Meter], _T]) -> _T:
    """What ``create(meter)`` makes on the current meter, made once per meter (each ``init()`` brings a new one).

    For plugins' own instruments: call it where they are recorded; after the first call it costs a
    dictionary look-up. ``key`` names the set (use your plugin's name).
    """
    meter = get_meter()
    cached = _instrument_cache.get(key)
    if cached is not None and cached[0] is meter:
        return cached[1]  # type: ignore[no-any-return]
    made = create(meter)
    _instrument_cache[key] = (meter, made)
    return made


def genai_metrics() -> GenAIMetrics:
    """The GenAI histograms: llamatelemetry's after ``init()``, else created once on the global meter."""
    telemetry = _current
    if telemetry is not None:
        return telemetry.metrics
    cached = _fallback.get("metrics")
    if cached is None:
        from llamatelemetry.semconv.metrics import GenAIMetrics

        cached = _fallback["metrics"] = GenAIMetrics.create(get_meter())
    return cached  # type: ignore[no-any-return]
