"""The plugin system: hook markers, records, and the process-wide plugin manager.

A six-line plugin that adds a tenant attribute to every generation span::

    from llamatelemetry.plugins import hookimpl

    class TenantPlugin:
        @hookimpl
        def llamatelemetry_request_start(self, span, request):
            span.set_attribute("app.tenant", "acme")

    llamatelemetry.init(service_name="svc", plugins=[TenantPlugin()])

A hook implementation whose name matches no hookspec is an error: ``register_plugin`` raises
``PluginValidationError`` (pluggy's), and an installed plugin with one is skipped and listed as
failed by ``llamatelemetry plugins``.
"""

from __future__ import annotations

from pluggy import PluginValidationError

from llamatelemetry.plugins._manager import (
    ENTRY_POINT_GROUP,
    PluginManager,
    get_plugin_manager,
    set_plugin_manager,
)
from llamatelemetry.plugins.hookspecs import hookimpl, hookspec
from llamatelemetry.plugins.records import (
    BackendSpec,
    InstrumentorSpec,
    LoadDriverSpec,
    PluginInfo,
    PresetSpec,
    StageSpec,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendSpec",
    "InstrumentorSpec",
    "LoadDriverSpec",
    "PluginInfo",
    "PluginManager",
    "PluginValidationError",
    "PresetSpec",
    "StageSpec",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "register_plugin",
    "set_plugin_manager",
    "unregister_plugin",
]


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register hook implementations from ``plugin`` without packaging it; returns the plugin's name.

    Raises ``PluginValidationError`` if ``plugin`` implements a hook no hookspec defines. Registered
    while telemetry runs, the plugin receives ``llamatelemetry_telemetry_start`` at once.
    """
    return get_plugin_manager().register(plugin, name=name)


def unregister_plugin(plugin: object | None = None, name: str | None = None) -> None:
    """Remove a plugin added with ``register_plugin`` or ``init(plugins=...)``."""
    get_plugin_manager().unregister(plugin, name=name)
