"""Every hook a llamatelemetry plugin can implement, grouped by when it is called.

A plugin is any object (usually a module) with functions named after these hooks and marked
with ``@llamatelemetry.plugins.hookimpl``. Installed distributions expose one through the
``llamatelemetry`` entry-point group::

    [project.entry-points.llamatelemetry]
    my_plugin = "my_plugin.plugin"

and application code can register one without packaging anything, with
``llamatelemetry.init(plugins=[obj])`` or ``llamatelemetry.register_plugin(obj)``.

Plugins load lazily, once: on the first ``init()`` or the first use of something that needs
them (``create_engine``, ``llamatelemetry plugins``), never at ``import llamatelemetry``.

Isolation: an implementation that raises is logged with its plugin's name and the other
implementations still run; the caller sees no exception. A hook implementation whose name no
spec here defines (``llamatelemetry_request_begin``) is an error, as with pluggy's
``check_pending()``: an installed plugin with one is skipped and listed as failed by
``llamatelemetry plugins``, and ``register_plugin`` raises ``PluginValidationError``. Mark an
implementation ``@hookimpl(optionalhook=True)`` for a hook of a later version.

Hooks are called with keyword arguments, so an implementation may accept only the arguments it
needs, and new arguments can be added to a spec later without breaking existing plugins.

The lifecycle, in order:

1. Registration (at plugin load): ``llamatelemetry_register_backends``,
   ``llamatelemetry_register_instrumentors``, ``llamatelemetry_register_stages``,
   ``llamatelemetry_register_presets``, ``llamatelemetry_register_load_drivers``,
   ``llamatelemetry_register_commands``.
2. Telemetry start (inside ``init()``): ``llamatelemetry_resource_attributes``,
   ``llamatelemetry_telemetry_start``.
3. Each request (on the caller's thread, on the hot path): ``llamatelemetry_request_start``,
   ``llamatelemetry_redact_messages``, ``llamatelemetry_request_end``.
4. Export (on the exporter's background thread): ``llamatelemetry_export_span``.
5. Shutdown (inside ``shutdown()``): ``llamatelemetry_telemetry_shutdown``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from llamatelemetry.config import TelemetrySettings
    from llamatelemetry.inference.base import InferenceRequest, InferenceResult
    from llamatelemetry.otel.export import ExportSpan
    from llamatelemetry.plugins.records import BackendSpec, InstrumentorSpec, LoadDriverSpec, PresetSpec, StageSpec

PROJECT_NAME = "llamatelemetry"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------
# 1. Registration
# --------------------------------------------------------------------------------------------


@hookspec
def llamatelemetry_register_backends() -> Iterable[BackendSpec]:
    """Return the inference backends this plugin provides.

    Called once per plugin manager, when plugins are loaded (on the thread that first needs
    them, usually the one calling ``init()`` or ``create_engine``). Must not block and must not
    import the engine: return ``BackendSpec`` records whose ``factory`` is an import reference,
    which is imported only when a user asks for that backend.

    A backend name taken by two plugins is reported (with both distributions) by
    ``llamatelemetry plugins``; the first one loaded wins.

    Example::

        @hookimpl
        def llamatelemetry_register_backends():
            return [BackendSpec(name="my-engine", factory="my_plugin.backend:MyBackend",
                                provider_name="my_engine")]
    """


@hookspec
def llamatelemetry_register_instrumentors() -> Iterable[InstrumentorSpec]:
    """Return the instrumentors this plugin provides (patching a client, a model, torch.distributed).

    Called once per plugin manager, when plugins are loaded. Must not block or import the
    instrumented library. ``llamatelemetry.sdk.instrument(name, target)`` and the named helpers
    (``instrument_llamacpp``, ``instrument_transformers``) find instrumentors here.

    Example::

        @hookimpl
        def llamatelemetry_register_instrumentors():
            return [InstrumentorSpec(name="my_client", factory="my_plugin.patch:instrument",
                                     uninstrument="my_plugin.patch:uninstrument")]
    """


@hookspec
def llamatelemetry_register_stages() -> Iterable[StageSpec]:
    """Return the pipeline, quantization and export stages this plugin provides.

    Called once per plugin manager, when plugins are loaded. Must not block. Stages are found
    by ``kind`` and ``name`` by the pipeline and quantization drivers.

    Example::

        @hookimpl
        def llamatelemetry_register_stages():
            return [StageSpec(name="dynamic", kind="quantize",
                              factory="my_plugin.quant:quantize_dynamic")]
    """


@hookspec
def llamatelemetry_register_presets() -> Iterable[PresetSpec]:
    """Return named presets (server flags for a known machine, benchmark profiles, ...).

    Called once per plugin manager, when plugins are loaded. Must not block.

    Example::

        @hookimpl
        def llamatelemetry_register_presets():
            return [PresetSpec(name="cpu", values={"gpu_layers": 0})]
    """


@hookspec
def llamatelemetry_register_load_drivers() -> Iterable[LoadDriverSpec]:
    """Return the benchmark load drivers this plugin provides (how ``llamatelemetry bench`` talks to a server).

    Called once per plugin manager, when plugins are loaded. Must not block or import the
    driver: ``LoadDriverSpec.factory`` is an import reference, imported only when a benchmark
    runs. The core's bench (configuration, prompts, statistics, reports, compare) drives whichever
    driver the chosen backend registered, and falls back to an engine-based driver for a backend
    that registered none.

    Example::

        @hookimpl
        def llamatelemetry_register_load_drivers():
            return [LoadDriverSpec(name="my-server", factory="my_plugin.bench:MyServerDriver",
                                   backends=("my-server",))]
    """


@hookspec
def llamatelemetry_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add subcommands to the ``llamatelemetry`` command line.

    Called once, by the CLI, on the main thread, before arguments are parsed. Add a parser with
    ``subparsers.add_parser(name, help=...)`` and set its handler with
    ``parser.set_defaults(handler=func)``; ``func(args)`` returns the exit status. Import
    nothing heavy here: do it inside the handler.

    Example::

        @hookimpl
        def llamatelemetry_register_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.set_defaults(handler=lambda args: print("hello") or 0)
    """


# --------------------------------------------------------------------------------------------
# 2. Telemetry start
# --------------------------------------------------------------------------------------------


@hookspec
def llamatelemetry_resource_attributes(settings: TelemetrySettings) -> Mapping[str, Any] | None:
    """Return attributes to add to the OpenTelemetry resource (host, rank, GPU model, ...).

    Called once per ``init()``, on the calling thread, before the providers are created. May do
    quick local look-ups; must not block on the network. Values must be OTel attribute values
    (str, bool, int, float or sequences of one of them). ``OTEL_RESOURCE_ATTRIBUTES`` and
    ``init(resource_attributes=...)`` take precedence over what plugins return.

    Example::

        @hookimpl
        def llamatelemetry_resource_attributes(settings):
            return {"deployment.environment.name": "staging"}
    """


@hookspec
def llamatelemetry_telemetry_start(
    settings: TelemetrySettings, tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> None:
    """Telemetry is configured: start background work (a GPU sampler) and create instruments.

    Called once per ``init()``, on the calling thread, after the tracer and meter providers are
    ready. A plugin registered while telemetry runs (``register_plugin``, or ``init(plugins=...)``
    on a second ``init()``) gets this call at registration, with the live settings and providers.
    May start daemon threads; each must be stopped in ``llamatelemetry_telemetry_shutdown``.
    Should return quickly.

    Example::

        @hookimpl
        def llamatelemetry_telemetry_start(settings, tracer_provider, meter_provider):
            meter = meter_provider.get_meter("my_plugin")
            meter.create_observable_gauge("my_plugin.queue.depth", callbacks=[read_depth])
    """


# --------------------------------------------------------------------------------------------
# 3. Each request
# --------------------------------------------------------------------------------------------


@hookspec
def llamatelemetry_request_start(span: Span, request: InferenceRequest) -> None:
    """A generation request's span has started: enrich it.

    Called for every generation the request recorder records (through an engine, an
    instrumented client or model, or ``llamatelemetry.inference.recording`` directly), on the
    caller's thread, before the backend runs. This is the hot path: do no I/O, take no locks
    that inference holds, and check ``span.is_recording()`` before computing anything costly.
    Called only when telemetry is enabled.

    Declare only the arguments you read: the recorder builds the ``InferenceRequest`` only when
    an implementation declares ``request``. A call that cannot be expressed as one (an
    embeddings call, a prompt of token ids) runs only the implementations that do not declare it.

    Example (add a tenant attribute)::

        @hookimpl
        def llamatelemetry_request_start(span, request):
            span.set_attribute("app.tenant", current_tenant())
    """


@hookspec
def llamatelemetry_request_end(
    span: Span,
    request: InferenceRequest,
    result: InferenceResult | None,
    error: BaseException | None,
) -> None:
    """A generation request finished (``result`` set) or failed (``error`` set); its span is still open.

    Called on the caller's thread, right after the backend returns or raises and before the
    span ends (the span already carries the response attributes, usage included). Same rules as
    ``llamatelemetry_request_start``: no I/O, read cached values (the GPU enricher reads its
    sampler's last reading; it never calls NVML here), and declare only what you read: the
    generated text is kept for ``result.text`` only when an implementation declares ``result``.
    Both ``result`` and ``error`` are ``None`` when a generation ended without a result (an
    integration's block left without reporting one).

    Example (a business metric)::

        @hookimpl
        def llamatelemetry_request_end(span, request, result, error):
            if result is not None:
                cost_counter.add(result.output_tokens or 0, {"model": result.model or ""})
    """


@hookspec
def llamatelemetry_redact_messages(messages: list[dict[str, Any]], kind: str) -> None:
    """Redact prompt or completion content before it is put on a span or event.

    Called only when content capture is on (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
    or ``init(capture_content=...)``), on the caller's thread, with a private copy of the
    messages in the semantic-convention shape (``{"role": ..., "parts": [{"type": "text",
    "content": ...}]}``). ``kind`` is ``"input"``, ``"output"`` or ``"system"``. Mutate the list
    or its dicts in place; every implementation sees the previous ones' changes.

    Example::

        @hookimpl
        def llamatelemetry_redact_messages(messages, kind):
            for message in messages:
                for part in message.get("parts", []):
                    if "content" in part:
                        part["content"] = EMAIL.sub("<email>", part["content"])
    """


# --------------------------------------------------------------------------------------------
# 4. Export
# --------------------------------------------------------------------------------------------


@hookspec
def llamatelemetry_export_span(span: ExportSpan) -> None:
    """A finished span is about to be exported: change its attributes or drop it.

    Called for every span that llamatelemetry's providers export, on the exporter's background
    thread (never on the caller's), in batches; it may take a little time but must not block
    for long, or spans queue up and are dropped (drops are counted). ``span`` is a mutable
    view: edit ``span.attributes`` (a dict), or call ``span.drop()``.

    Example (drop health checks, redact a header)::

        @hookimpl
        def llamatelemetry_export_span(span):
            if span.name == "GET /health":
                span.drop()
            span.attributes.pop("http.request.header.authorization", None)
    """


# --------------------------------------------------------------------------------------------
# 5. Shutdown
# --------------------------------------------------------------------------------------------


@hookspec
def llamatelemetry_telemetry_shutdown(settings: TelemetrySettings) -> None:
    """Telemetry is shutting down: stop threads and flush what the plugin holds.

    Called once per ``init()``, from ``shutdown()`` (or at interpreter exit), on that thread,
    before the providers flush. May block briefly to join threads.

    Example::

        @hookimpl
        def llamatelemetry_telemetry_shutdown(settings):
            sampler.stop()
    """
