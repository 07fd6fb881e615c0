"""The plugin manager: entry-point loading, isolation of failing plugins, and a typed facade.

A leaf of the core: it imports only the hookspecs and the records. The built-in plugins are import
strings, loaded like installed entry points when plugins load.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pluggy

from llamatelemetry.plugins import hookspecs
from llamatelemetry.plugins.records import (
    BackendSpec,
    InstrumentorSpec,
    LoadDriverSpec,
    PluginInfo,
    PresetSpec,
    StageSpec,
)

if TYPE_CHECKING:
    import argparse

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from llamatelemetry.config import TelemetrySettings
    from llamatelemetry.inference.base import InferenceRequest, InferenceResult
    from llamatelemetry.otel.export import ExportSpan

__all__ = ["RequestHookNeeds", "PluginManager", "get_plugin_manager", "set_plugin_manager", "ENTRY_POINT_GROUP",
           "BUILTIN_PLUGINS"]

log = logging.getLogger("llamatelemetry.plugins")

ENTRY_POINT_GROUP = "llamatelemetry"
ENV_ALLOW = "LLAMATELEMETRY_PLUGINS"
ENV_BLOCK = "LLAMATELEMETRY_DISABLE_PLUGINS"
ENV_TRACE = "LLAMATELEMETRY_TRACE_PLUGINS"

CORE_DISTRIBUTION = "llamatelemetry-core"

# The core's own plugins, as entry points (name = module[:object]) so that the manager imports none
# of them itself and one that fails to import is reported and skipped like an installed plugin.
BUILTIN_PLUGINS: tuple[metadata.EntryPoint, ...] = (
    metadata.EntryPoint("llamatelemetry.builtin.cli", "llamatelemetry.cli.commands", "llamatelemetry.builtin"),
    metadata.EntryPoint("llamatelemetry.builtin.gpu", "llamatelemetry.gpu.plugin:GPUTelemetryPlugin",
                        "llamatelemetry.builtin"),
)

_RecordT = TypeVar("_RecordT", BackendSpec, InstrumentorSpec, StageSpec, PresetSpec, LoadDriverSpec)

_TRUE = {"1", "true", "yes", "on"}
# A redaction hook that fails must not let content through: its errors reach redact_messages().
_UNGUARDED_HOOKS = frozenset({"llamatelemetry_redact_messages"})
# Registration hooks whose records are listed by kind; other hooks are listed by name.
_RECORD_HOOKS = frozenset({"llamatelemetry_register_backends", "llamatelemetry_register_instrumentors",
                           "llamatelemetry_register_stages", "llamatelemetry_register_presets",
                           "llamatelemetry_register_load_drivers"})


def _split_names(value: str) -> set[str]:
    return {part.strip() for part in value.split(",") if part.strip()}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class PluginManager:
    """Loads plugins once and calls their hooks, so that one broken plugin never breaks the others.

    There is one process-wide instance (``get_plugin_manager()``); tests make fresh ones with
    ``llamatelemetry.testing.fresh_plugin_manager()``.
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._lock = threading.RLock()
        self._infos: dict[str, PluginInfo] = {}
        self._registry_cache: dict[str, Any] = {}
        self._conflicts: list[str] = []
        self._failed_calls: set[tuple[str, str]] = set()
        self._builtins_registered = False
        #: The arguments of the last ``llamatelemetry_telemetry_start`` call, while telemetry runs.
        self._started_with: dict[str, Any] | None = None
        self._tracing = os.environ.get(ENV_TRACE, "").strip().lower() in _TRUE
        if self._tracing:
            self._pm.trace.root.setwriter(sys.stderr.write)
            self._pm.enable_tracing()

    def _trace(self, message: str) -> None:
        if self._tracing:
            sys.stderr.write(f"llamatelemetry plugins: {message}\n")

    # ---------------------------------------------------------------- loading

    def ensure_loaded(self) -> None:
        """Load built-in plugins and installed entry points, once; later calls do nothing."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._register_builtins()
            if self._load_entry_points:
                self._load_installed()
            self._check_pending()
            self._loaded = True
            self._registry_cache.clear()

    def _register_builtins(self) -> None:
        if self._builtins_registered:
            return
        version = _version_of(CORE_DISTRIBUTION)
        for ep in BUILTIN_PLUGINS:
            if self._pm.get_plugin(ep.name) is None:
                self._load_entry_point(ep, CORE_DISTRIBUTION, version, status="builtin")
        self._builtins_registered = True

    def _load_installed(self) -> None:
        allow_raw = os.environ.get(ENV_ALLOW)
        allow = {_normalize(n) for n in _split_names(allow_raw)} if allow_raw is not None else None
        block = {_normalize(n) for n in _split_names(os.environ.get(ENV_BLOCK, ""))}
        entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            names = {_normalize(ep.name)} | ({_normalize(dist_name)} if dist_name else set())
            if names & block:
                self._infos[ep.name] = PluginInfo(ep.name, dist_name, dist_version, "blocked",
                                                  error=f"blocked by {ENV_BLOCK}")
                log.debug("plugin %s (%s %s) blocked by %s", ep.name, dist_name, dist_version, ENV_BLOCK)
                continue
            if allow is not None and not names & allow:
                self._infos[ep.name] = PluginInfo(ep.name, dist_name, dist_version, "not allowed",
                                                  error=f"not listed in {ENV_ALLOW}")
                continue
            if self._pm.get_plugin(ep.name) is not None:
                continue
            self._load_entry_point(ep, dist_name, dist_version, status="loaded")

    def _load_entry_point(self, ep: metadata.EntryPoint, dist_name: str | None, dist_version: str | None,
                          status: str) -> None:
        self._trace(f"loading {ep.name!r} = {ep.value} from {dist_name} {dist_version}")
        try:
            plugin = ep.load()
            if isinstance(plugin, type):
                plugin = plugin()
            self._register(plugin, ep.name, distribution=dist_name, version=dist_version, status=status)
        except Exception as exc:  # a broken plugin must not stop the others or the application
            self._fail(ep.name, dist_name, dist_version, f"{type(exc).__name__}: {exc}", "failed to load")

    def _fail(self, name: str, distribution: str | None, version: str | None, error: str, what: str) -> None:
        self._infos[name] = PluginInfo(name, distribution, version, "failed", error=error)
        self._registry_cache.clear()
        log.warning("llamatelemetry plugin %r from %s %s %s and is skipped: %s",
                    name, distribution or "(unknown distribution)", version or "", what, error)

    def _register(self, plugin: object, name: str, *, distribution: str | None, version: str | None,
                  status: str) -> str:
        registered = self._pm.register(plugin, name=name)
        assert registered is not None
        unknown = self._unknown_hooks(plugin)
        if unknown:
            self._pm.unregister(plugin)
            raise pluggy.PluginValidationError(plugin, _unknown_hooks_message(registered, distribution, version,
                                                                              unknown))
        self._isolate(plugin, registered)
        self._infos[registered] = PluginInfo(registered, distribution, version, status)
        self._registry_cache.clear()
        return registered

    def _unknown_hooks(self, plugin: object) -> list[str]:
        """Hooks that ``plugin`` implements but no hookspec defines (a misspelling never runs otherwise)."""
        return sorted(
            caller.name for caller in self._pm.get_hookcallers(plugin) or []
            if not caller.has_spec()
            and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
        )

    def _check_pending(self) -> None:
        """pluggy's ``check_pending()``, made per plugin: whoever still has an unknown hook is skipped, not fatal."""
        while True:
            try:
                self._pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                plugin = exc.plugin
                name = self._pm.get_name(plugin) or repr(plugin)
                info = self._infos.get(name)
                distribution, version = (info.distribution, info.version) if info else (None, None)
                unknown = self._unknown_hooks(plugin)
                self._pm.unregister(plugin)
                self._fail(name, distribution, version,
                           _unknown_hooks_message(name, distribution, version, unknown), "has an unknown hook")

    def _isolate(self, plugin: object, plugin_name: str) -> None:
        """Wrap each of the plugin's hook implementations so an exception is logged, not raised."""
        for caller in self._pm.get_hookcallers(plugin) or []:
            if caller.name in _UNGUARDED_HOOKS:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin or impl.hookwrapper or impl.wrapper:
                    continue
                # HookImpl.function is typed Final, but replacing it is how the guard reaches every call.
                impl.function = self._guard(impl.function, plugin_name, caller.name)  # type: ignore[misc]

    def _guard(self, function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
        failed = self._failed_calls

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                key = (plugin_name, hook_name)
                if key not in failed:
                    failed.add(key)
                    info = self._infos.get(plugin_name)
                    known = info is not None and info.distribution
                    where = f"{info.distribution} {info.version}" if known and info else "registered in code"
                    log.warning(
                        "llamatelemetry plugin %r (%s) raised in %s; the other plugins still ran "
                        "(further errors of this hook are logged at debug level)",
                        plugin_name, where, hook_name, exc_info=True,
                    )
                else:
                    log.debug("plugin %r raised in %s again: %r", plugin_name, hook_name, exc)
                return None

        return guarded

    # ---------------------------------------------------------------- code registration

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register an object whose ``@hookimpl`` functions become hook implementations; returns its name.

        A hook implementation whose name no hookspec defines raises ``pluggy.PluginValidationError``
        here (the plugin is not registered): the developer who wrote it is the one calling. While
        telemetry is running, the new plugin receives ``llamatelemetry_telemetry_start`` at once.
        """
        self.ensure_loaded()
        with self._lock:
            plugin_name = name or self._pm.get_canonical_name(plugin)
            existing = self._pm.get_plugin(plugin_name)
            if existing is plugin:
                return plugin_name
            if existing is not None:
                raise ValueError(f"A plugin named {plugin_name!r} is already registered; pass another name=.")
            registered = self._register(plugin, plugin_name, distribution=None, version=None, status="registered")
            self._replay_telemetry_start(plugin)
            return registered

    def _replay_telemetry_start(self, plugin: object) -> None:
        """Give a plugin registered after ``init()`` the ``llamatelemetry_telemetry_start`` call it missed."""
        arguments = self._started_with
        if arguments is None:
            return
        for impl in self._pm.hook.llamatelemetry_telemetry_start.get_hookimpls():
            if impl.plugin is plugin:
                self._trace(f"replaying llamatelemetry_telemetry_start for {impl.plugin_name!r}")
                # The guard from _isolate() logs a raising implementation instead of raising here.
                impl.function(*(arguments[arg] for arg in impl.argnames))

    def unregister(self, plugin: object | None = None, name: str | None = None) -> None:
        """Remove a plugin registered by ``register`` (by object or by name)."""
        with self._lock:
            removed = self._pm.unregister(plugin=plugin, name=name)
            if removed is not None:
                for key, value in list(self._infos.items()):
                    if self._pm.get_plugin(key) is None and value.status in {"registered", "loaded", "builtin"}:
                        del self._infos[key]
            self._registry_cache.clear()

    def is_registered(self, plugin: object) -> bool:
        """Whether ``plugin`` is registered."""
        return self._pm.is_registered(plugin)

    @property
    def pluggy_manager(self) -> pluggy.PluginManager:
        """The underlying pluggy manager, for advanced use (tracing, ``subset_hook_caller``)."""
        return self._pm

    # ---------------------------------------------------------------- registries

    def _collect(self, hook_name: str, record_type: type[_RecordT]) -> dict[str, _RecordT]:
        self.ensure_loaded()
        cached = self._registry_cache.get(hook_name)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        with self._lock:
            records: dict[str, _RecordT] = {}
            caller = getattr(self._pm.hook, hook_name)
            # Earliest-registered plugin first, so an installed plugin keeps its name against later ones.
            for impl in caller.get_hookimpls():
                returned = impl.function()
                self._trace(f"{hook_name} [{impl.plugin_name}] -> {returned!r}")
                if returned is None:
                    continue
                plugin_name = impl.plugin_name
                info = self._infos.get(plugin_name)
                for record in _as_iterable(returned, plugin_name, hook_name):
                    if not isinstance(record, record_type):
                        log.warning("plugin %r returned %r from %s; expected %s records; ignored",
                                    plugin_name, record, hook_name, record_type.__name__)
                        continue
                    distribution = info.distribution if info and info.distribution else plugin_name
                    owned: _RecordT = attrs.evolve(record, distribution=distribution)
                    for name in (owned.name, *getattr(owned, "aliases", ())):
                        key = _registry_key(name)
                        if isinstance(owned, StageSpec):  # stage names are unique within a kind only
                            key = f"{owned.kind}:{key}"
                        previous = records.get(key)
                        if previous is None:
                            records[key] = owned
                        elif previous != owned or previous.distribution != owned.distribution:
                            message = (f"{record_type.__name__} {key!r} is registered by both "
                                       f"{previous.distribution} and {owned.distribution}; "
                                       f"using the one from {previous.distribution}")
                            if message not in self._conflicts:
                                self._conflicts.append(message)
                                log.warning(message)
                    self._add_provided(plugin_name, hook_name, owned.name)
            self._registry_cache[hook_name] = records
            return records

    def _add_provided(self, plugin_name: str, hook_name: str, item: str) -> None:
        info = self._infos.get(plugin_name)
        if info is None:
            return
        kind = hook_name.removeprefix("llamatelemetry_register_")
        provides = dict(info.provides)
        items = provides.get(kind, ())
        if item not in items:
            provides[kind] = (*items, item)
            self._infos[plugin_name] = attrs.evolve(info, provides=provides)

    def backends(self) -> dict[str, BackendSpec]:
        """Registered backends by name (aliases included), normalized to lowercase."""
        return self._collect("llamatelemetry_register_backends", BackendSpec)

    def instrumentors(self) -> dict[str, InstrumentorSpec]:
        """Registered instrumentors by name."""
        return self._collect("llamatelemetry_register_instrumentors", InstrumentorSpec)

    def stages(self) -> dict[str, StageSpec]:
        """Registered pipeline stages, keyed ``"kind:name"``."""
        found = self._collect("llamatelemetry_register_stages", StageSpec)
        return {f"{spec.kind}:{spec.name}": spec for spec in found.values()}

    def presets(self) -> dict[str, PresetSpec]:
        """Registered presets by name."""
        return self._collect("llamatelemetry_register_presets", PresetSpec)

    def load_drivers(self) -> dict[str, LoadDriverSpec]:
        """Registered benchmark load drivers by name."""
        return self._collect("llamatelemetry_register_load_drivers", LoadDriverSpec)

    def conflicts(self) -> list[str]:
        """Name conflicts found between plugins, as messages naming both distributions."""
        self.backends()
        self.instrumentors()
        self.stages()
        self.presets()
        self.load_drivers()
        return list(self._conflicts)

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin seen, with its distribution, version, status and what it registers."""
        self.conflicts()
        infos: list[PluginInfo] = []
        for name, info in self._infos.items():
            plugin = self._pm.get_plugin(name)
            hooks = tuple(sorted(
                caller.name.removeprefix("llamatelemetry_") for caller in self._pm.get_hookcallers(plugin) or []
                if caller.name not in _RECORD_HOOKS
            )) if plugin is not None else ()
            infos.append(attrs.evolve(info, provides={**info.provides, "hooks": hooks}) if hooks else info)
        return sorted(infos, key=lambda info: (info.status == "builtin", info.name))

    # ---------------------------------------------------------------- typed hook calls

    def has_impls(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (lets hot paths skip building arguments)."""
        self.ensure_loaded()
        return bool(getattr(self._pm.hook, hook_name).get_hookimpls())

    def request_hook_needs(self) -> RequestHookNeeds:
        """What the request hooks' implementations take, so the recorder builds only what someone reads.

        Hook implementations receive only the arguments they declare: a request is built for the
        hooks only when one declares ``request``, and the generated text kept only when a
        ``llamatelemetry_request_end`` declares ``result``. Cached until a plugin is (un)registered.
        """
        cached = self._registry_cache.get("request_hook_needs")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        self.ensure_loaded()
        starts = self._pm.hook.llamatelemetry_request_start.get_hookimpls()
        ends = self._pm.hook.llamatelemetry_request_end.get_hookimpls()
        needs = RequestHookNeeds(
            any=bool(starts or ends),
            request=any("request" in impl.argnames for impl in (*starts, *ends)),
            result=any("result" in impl.argnames for impl in ends),
        )
        self._registry_cache["request_hook_needs"] = needs
        return needs

    def register_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        """Call ``llamatelemetry_register_commands``."""
        self.ensure_loaded()
        self._pm.hook.llamatelemetry_register_commands(subparsers=subparsers)

    def resource_attributes(self, settings: TelemetrySettings) -> dict[str, Any]:
        """Merge what ``llamatelemetry_resource_attributes`` returns (earliest plugin wins a clash)."""
        self.ensure_loaded()
        merged: dict[str, Any] = {}
        for returned in self._pm.hook.llamatelemetry_resource_attributes(settings=settings):
            if isinstance(returned, Mapping):
                for key, value in returned.items():
                    merged.setdefault(str(key), value)
        return merged

    def telemetry_start(self, settings: TelemetrySettings, tracer_provider: TracerProvider,
                        meter_provider: MeterProvider) -> None:
        """Call ``llamatelemetry_telemetry_start``."""
        self.ensure_loaded()
        # Kept for plugins registered later (they get the call at registration), until shutdown.
        self._started_with = {"settings": settings, "tracer_provider": tracer_provider,
                              "meter_provider": meter_provider}
        self._pm.hook.llamatelemetry_telemetry_start(
            settings=settings, tracer_provider=tracer_provider, meter_provider=meter_provider
        )

    def telemetry_shutdown(self, settings: TelemetrySettings) -> None:
        """Call ``llamatelemetry_telemetry_shutdown``."""
        self._started_with = None
        self._pm.hook.llamatelemetry_telemetry_shutdown(settings=settings)

    def _request_caller(self, hook_name: str, with_request: bool) -> Any:
        # Without a request, only the implementations that do not declare ``request`` run.
        key = f"{hook_name}:{with_request}"
        caller = self._registry_cache.get(key)
        if caller is None:
            caller = getattr(self._pm.hook, hook_name)
            takers = [impl.plugin for impl in caller.get_hookimpls() if "request" in impl.argnames]
            if takers and not with_request:
                caller = self._pm.subset_hook_caller(hook_name, takers)
            self._registry_cache[key] = caller
        return caller

    def request_start(self, span: Span, request: InferenceRequest | None) -> None:
        """Call ``llamatelemetry_request_start`` (without a request: the implementations that take none)."""
        self._request_caller("llamatelemetry_request_start", request is not None)(span=span, request=request)

    def request_end(self, span: Span, request: InferenceRequest | None, result: InferenceResult | None,
                    error: BaseException | None) -> None:
        """Call ``llamatelemetry_request_end`` (without a request: the implementations that take none)."""
        self._request_caller("llamatelemetry_request_end", request is not None)(
            span=span, request=request, result=result, error=error)

    def redact_messages(self, messages: list[dict[str, Any]], kind: str) -> bool:
        """Call ``llamatelemetry_redact_messages``; False (content must be dropped) if one raised."""
        try:
            self._pm.hook.llamatelemetry_redact_messages(messages=messages, kind=kind)
        except Exception:
            key = ("redact", kind)
            if key not in self._failed_calls:
                self._failed_calls.add(key)
                log.warning("a llamatelemetry_redact_messages hook raised; no %s content is recorded "
                            "(further errors are logged at debug level)", kind, exc_info=True)
            else:
                log.debug("a llamatelemetry_redact_messages hook raised again", exc_info=True)
            return False
        return True

    def export_span(self, span: ExportSpan) -> None:
        """Call ``llamatelemetry_export_span``."""
        self._pm.hook.llamatelemetry_export_span(span=span)


def _unknown_hooks_message(name: str, distribution: str | None, version: str | None, hooks: list[str]) -> str:
    where = f"{distribution} {version or ''}".strip() if distribution else "registered in code"
    return (f"plugin {name!r} ({where}) implements {', '.join(hooks)}, which no llamatelemetry hookspec defines "
            "(misspelled? the hooks are listed in llamatelemetry.plugins.hookspecs)")


@attrs.frozen
class RequestHookNeeds:
    """Whether request hooks are implemented at all, and whether any reads the request or the result."""

    any: bool
    request: bool
    result: bool


def _registry_key(name: str) -> str:
    return name.strip().lower()


def _as_iterable(returned: Any, plugin_name: str, hook_name: str) -> Iterator[Any]:
    if isinstance(returned, (str, bytes)) or not isinstance(returned, Iterable):
        yield returned
        return
    yield from returned


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use; plugins load on first need)."""
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = PluginManager()
    return _manager


def set_plugin_manager(manager: PluginManager | None) -> PluginManager | None:
    """Swap the process-wide plugin manager and return the previous one (for tests)."""
    global _manager
    with _manager_lock:
        previous, _manager = _manager, manager
    return previous
