"""Our own plugin distributions: which extra installs what, for install hints and lazy import paths."""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from types import ModuleType
from typing import Final

import attrs

from llamatelemetry.errors import PluginFeatureMissingError, PluginNotInstalledError

__all__ = ["KnownPlugin", "KNOWN_PLUGINS", "extra_for_backend", "extra_for_instrumentor", "import_plugin_module",
           "load_plugin_attribute"]


@attrs.frozen
class KnownPlugin:
    """A first-party plugin distribution."""

    extra: str
    distribution: str
    module: str
    backends: tuple[str, ...] = ()
    instrumentors: tuple[str, ...] = ()


KNOWN_PLUGINS: Final[tuple[KnownPlugin, ...]] = (
    KnownPlugin("llamacpp", "llamatelemetry-llamacpp", "llamatelemetry_llamacpp",
                backends=("llama.cpp", "llamacpp", "llama_cpp", "llama-cpp"), instrumentors=("llama_cpp",)),
    KnownPlugin("transformers", "llamatelemetry-transformers", "llamatelemetry_transformers",
                backends=("transformers", "hf", "huggingface"), instrumentors=("transformers",)),
    KnownPlugin("nccl", "llamatelemetry-nccl", "llamatelemetry_nccl", instrumentors=("torch_distributed",)),
    KnownPlugin("unsloth", "llamatelemetry-unsloth", "llamatelemetry_unsloth", backends=("unsloth",)),
    KnownPlugin("kaggle", "llamatelemetry-kaggle", "llamatelemetry_kaggle"),
)


def _by(predicate: str, value: str) -> KnownPlugin | None:
    key = value.strip().lower()
    for plugin in KNOWN_PLUGINS:
        if key in getattr(plugin, predicate):
            return plugin
    return None


def extra_for_backend(name: str) -> KnownPlugin | None:
    """The first-party plugin that provides backend ``name``, if any."""
    return _by("backends", name)


def extra_for_instrumentor(name: str) -> KnownPlugin | None:
    """The first-party plugin that provides instrumentor ``name``, if any."""
    return _by("instrumentors", name)


def import_plugin_module(extra: str, feature: str) -> ModuleType:
    """Import the top-level module of the plugin installed by ``extra``, or raise the install command."""
    plugin = next(p for p in KNOWN_PLUGINS if p.extra == extra)
    try:
        return importlib.import_module(plugin.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != plugin.module:
            raise  # the plugin is installed but one of its own imports is missing: show that error
        raise PluginNotInstalledError(feature, extra, distribution=plugin.distribution) from None


def load_plugin_attribute(extra: str, attribute: str, feature: str) -> object:
    """``getattr(plugin_module, attribute)``, raising a clear error if the plugin or the name is missing."""
    module = import_plugin_module(extra, feature)
    try:
        return getattr(module, attribute)
    except AttributeError:
        plugin = next(p for p in KNOWN_PLUGINS if p.extra == extra)
        try:
            version: str | None = metadata.version(plugin.distribution)
        except metadata.PackageNotFoundError:
            version = None
        raise PluginFeatureMissingError(feature, plugin.distribution, version) from None


def alias_module(alias: str, extra: str) -> None:
    """Make ``sys.modules[alias]`` the plugin's module (for ``llamatelemetry.llama`` and friends)."""
    sys.modules[alias] = import_plugin_module(extra, alias)
