"""Public names that plugin distributions provide, resolved from the core's own packaging metadata.

The core names no plugin in its code. Its ``pyproject.toml`` declares, in the entry-point group
``llamatelemetry.extras``, each feature of the public API that a plugin provides, the plugin
module that provides it and the core extra that installs it::

    [project.entry-points."llamatelemetry.extras"]
    "llamatelemetry.llama" = "llamatelemetry_llamacpp [llamacpp]"
    "llamatelemetry.backends.LlamaCppBackend" = "llamatelemetry_llamacpp:LlamaCppBackend [llamacpp]"
    "backend:llama.cpp" = "llamatelemetry_llamacpp [llamacpp]"

Keys are either a dotted import path (a module or ``module.attribute`` of the core), or
``backend:<name>``, ``instrumentor:<name>``, ``stage:<kind>:<name>`` or ``init:<argument>`` for names a
plugin registers.
The distribution that an extra installs is read from the core's ``Requires-Dist``
(``llamatelemetry-llamacpp==0.1.0; extra == "llamacpp"``). Adding a plugin to the API is an edit
of that table, never of the core's code.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Final

import attrs

from llamatelemetry.errors import PluginFeatureMissingError, PluginNotInstalledError

__all__ = [
    "CORE_DISTRIBUTION",
    "EXTRAS_GROUP",
    "ProvidedFeature",
    "alias_module",
    "find_feature",
    "install_hint",
    "load_feature",
    "module_attributes",
    "provided_features",
    "why_unavailable",
]

CORE_DISTRIBUTION: Final = "llamatelemetry-core"
EXTRAS_GROUP: Final = "llamatelemetry.extras"

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@attrs.frozen
class ProvidedFeature:
    """A feature of the public API that the plugin installed by one of the core's extras provides.

    Example: ``find_feature("llamatelemetry.llama")`` is
    ``ProvidedFeature(key="llamatelemetry.llama", module="llamatelemetry_llamacpp", attribute=None,
    extra="llamacpp", distribution="llamatelemetry-llamacpp")``.
    """

    #: The import path (``"llamatelemetry.backends.LlamaCppBackend"``) or registered name (``"backend:hf"``).
    key: str
    #: The plugin's module that provides it.
    module: str
    #: The name in ``module``, or ``None`` when the feature is the module itself.
    attribute: str | None
    #: The core extra that installs the plugin (``pip install "llamatelemetry-core[<extra>]"``).
    extra: str
    #: The distribution the extra installs, from the core's ``Requires-Dist``; ``None`` if it names none.
    distribution: str | None

    @property
    def install_command(self) -> str:
        """The exact command that installs the plugin."""
        return f'pip install "{CORE_DISTRIBUTION}[{self.extra}]"'

    def is_installed(self) -> bool:
        """Whether the plugin's module can be imported (checked without importing it)."""
        top = self.module.split(".")[0]
        if top in sys.modules:
            # None there is how Python marks a module as not importable.
            return sys.modules[top] is not None
        import importlib.util

        return importlib.util.find_spec(top) is not None

    def not_installed_error(self, feature: str | None = None) -> PluginNotInstalledError:
        """The error that names the install command for this feature."""
        return PluginNotInstalledError(feature or self.key, self.extra, distribution=self.distribution,
                                       module=self.module.split(".")[0])


@functools.lru_cache(maxsize=1)
def provided_features() -> dict[str, ProvidedFeature]:
    """Every feature the core's extras provide, by key (read once from the installed metadata)."""
    try:
        core = metadata.distribution(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return {}  # running from a source tree without metadata: no plugin features are known
    distributions: dict[str, str] = {}
    for requirement in core.requires or []:
        marker = _EXTRA_MARKER.search(requirement)
        name = _REQUIREMENT_NAME.match(requirement)
        if marker and name:
            distributions.setdefault(marker.group(1), name.group(1))
    features: dict[str, ProvidedFeature] = {}
    for ep in core.entry_points:
        if ep.group != EXTRAS_GROUP or not ep.extras:
            continue
        extra = ep.extras[0]
        features[ep.name] = ProvidedFeature(ep.name, ep.module, ep.attr, extra, distributions.get(extra))
    return features


def find_feature(key: str) -> ProvidedFeature | None:
    """The plugin feature declared under ``key``, or ``None`` when the core's metadata names none."""
    return provided_features().get(key)


def load_feature(key: str, feature: str | None = None) -> object:
    """Import what ``key`` names from its plugin; without the plugin, raise the install command.

    ``feature`` is how the error message names what the user asked for (default: ``key``).
    """
    found = find_feature(key)
    what = feature or key
    if found is None:
        raise ModuleNotFoundError(
            f"{what} is provided by a plugin, but the installed {CORE_DISTRIBUTION} metadata declares no "
            f"provider for it (group {EXTRAS_GROUP!r}); reinstall {CORE_DISTRIBUTION}.", name=key)
    top = found.module.split(".")[0]
    try:
        module = importlib.import_module(found.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the plugin is installed but one of its own imports is missing: that error is the useful one
        raise found.not_installed_error(what) from None
    if found.attribute is None:
        return module
    try:
        return getattr(module, found.attribute)
    except AttributeError:
        version = _version_of(found.distribution) if found.distribution else None
        raise PluginFeatureMissingError(what, found.distribution or top, version) from None


def module_attributes(module: str, public: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A core module's ``__getattr__`` and ``__dir__`` (PEP 562) for the names plugins provide it.

    Usage, in ``llamatelemetry.backends``: ``__getattr__, __dir__ = module_attributes(__name__, __all__)``.
    """
    prefix = f"{module}."

    def getattr_(name: str) -> Any:
        key = prefix + name
        if find_feature(key) is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return load_feature(key)

    def dir_() -> list[str]:
        return sorted({*public, *(key[len(prefix):] for key in provided_features() if key.startswith(prefix))})

    return getattr_, dir_


def alias_module(name: str) -> None:
    """Make ``sys.modules[name]`` the plugin module that the core's metadata declares for ``name``."""
    sys.modules[name] = load_feature(name)  # type: ignore[assignment]


def install_hint(key: str) -> str | None:
    """What to run so that the plugin feature ``key`` exists, or ``None`` if no extra provides it.

    The install command when the plugin is missing; an upgrade command when it is installed but did
    not provide the feature (too old, or blocked by ``LLAMATELEMETRY_DISABLE_PLUGINS``).
    """
    found = find_feature(key)
    if found is None:
        return None
    if not found.is_installed() or found.distribution is None:
        return found.install_command
    version = _version_of(found.distribution)
    return (f'pip install --upgrade "{found.distribution}" (the installed {version or "(unknown version)"} does '
            f"not provide it, or it is blocked by LLAMATELEMETRY_DISABLE_PLUGINS)")


def why_unavailable(key: str, feature: str) -> str | None:
    """Why the plugin feature ``key`` will not work in this process, with the fix; ``None`` when it will.

    Installed and loaded is fine; not installed names the install command; installed but not
    loaded (blocked, not allowed, failed) names the plugin's status.
    """
    found = find_feature(key)
    if found is None:
        return None
    if not found.is_installed():
        return str(found.not_installed_error(feature))
    if found.distribution is None:
        return None
    from llamatelemetry.plugins._manager import get_plugin_manager

    infos = [info for info in get_plugin_manager().plugin_infos() if info.distribution == found.distribution]
    if not infos or any(info.status == "loaded" for info in infos):
        return None
    info = infos[0]
    return (f"{feature}: the installed {found.distribution} plugin is {info.status}"
            f"{f' ({info.error})' if info.error else ''}, so it is not used.")


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
