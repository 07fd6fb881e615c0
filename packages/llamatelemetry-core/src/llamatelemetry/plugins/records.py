"""The small frozen records that registration hooks return.

A record names what a plugin provides and where to import it from; it does no work. The import
happens only when the thing is used, so registering costs nothing at ``init()``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

__all__ = ["BackendSpec", "InstrumentorSpec", "StageSpec", "PresetSpec", "LoadDriverSpec", "PluginInfo", "load_object"]


def load_object(reference: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted) and return it."""
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"{reference!r} is not an import reference: write it as 'package.module:attribute'.")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_reference(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if ":" not in value:
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name}={value!r}: write it as 'package.module:attribute'."
        )


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or value != value.strip():
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a non-empty name, got {value!r}.")


@attrs.frozen
class BackendSpec:
    """A backend a plugin provides, resolved by ``create_engine(backend=name)``.

    ``factory`` is an import reference to a callable (usually the backend class) that takes the
    keyword arguments given to ``create_engine`` and returns an object following the
    ``LLMBackend`` protocol. It is imported only when the backend is asked for.

    Example::

        @hookimpl
        def llamatelemetry_register_backends():
            return [BackendSpec(name="echo-server", factory="my_plugin.backend:EchoBackend",
                                provider_name="my_provider", span_kind="client")]
    """

    name: str = attrs.field(validator=_check_name)
    factory: str = attrs.field(validator=_check_reference)
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_names)
    description: str = ""
    #: Value of ``gen_ai.provider.name`` on this backend's spans (lowercase, semconv style).
    provider_name: str = "unknown"
    #: ``"client"`` when the backend calls a server over the network, else ``"internal"``.
    span_kind: Literal["client", "internal"] = "internal"
    #: Filled in by the plugin manager: the distribution that registered the spec.
    distribution: str | None = attrs.field(default=None, eq=False)

    def load(self) -> Any:
        """Import and return the factory."""
        return load_object(self.factory)


@attrs.frozen
class InstrumentorSpec:
    """Something a plugin can patch with telemetry: a client class, a model, ``torch.distributed``.

    ``factory`` is an import reference to a callable ``instrument(target, **options)`` that
    instruments ``target`` in place and returns it; ``uninstrument`` (optional) undoes that.

    Example::

        InstrumentorSpec(name="llama_cpp", factory="my_plugin.patch:instrument",
                         uninstrument="my_plugin.patch:uninstrument")
    """

    name: str = attrs.field(validator=_check_name)
    factory: str = attrs.field(validator=_check_reference)
    uninstrument: str | None = None
    description: str = ""
    distribution: str | None = attrs.field(default=None, eq=False)

    def load(self) -> Any:
        """Import and return the instrument callable."""
        return load_object(self.factory)

    def load_uninstrument(self) -> Any | None:
        """Import and return the uninstrument callable, or ``None`` when there is none."""
        return load_object(self.uninstrument) if self.uninstrument else None


@attrs.frozen
class StageSpec:
    """A pipeline, quantization or export stage (fine-tune, merge, GGUF export, quantize, ...).

    ``kind`` groups stages (``"quantize"``, ``"export"``, ``"merge"``, ...); ``factory`` is an
    import reference to the callable that runs the stage.
    """

    name: str = attrs.field(validator=_check_name)
    kind: str = attrs.field(validator=_check_name)
    factory: str = attrs.field(validator=_check_reference)
    description: str = ""
    distribution: str | None = attrs.field(default=None, eq=False)

    def load(self) -> Any:
        """Import and return the stage callable."""
        return load_object(self.factory)


@attrs.frozen
class PresetSpec:
    """A named set of settings (for example the server flags for Kaggle's two T4 GPUs).

    ``values`` maps setting names to values; what reads them decides what each name means.
    """

    name: str = attrs.field(validator=_check_name)
    values: Mapping[str, Any] = attrs.field(factory=dict)
    description: str = ""
    distribution: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class LoadDriverSpec:
    """A load driver for ``llamatelemetry bench``: how to send benchmark traffic to one kind of server.

    ``factory`` is an import reference to a callable that takes the benchmark's options and
    returns a ``llamatelemetry.bench.drivers.LoadDriver``; it is imported only when a benchmark
    uses it. ``backends`` lists the backend names (as given to ``create_engine``) this driver
    serves; a backend without a driver of its own is benchmarked through its engine.

    Example::

        @hookimpl
        def llamatelemetry_register_load_drivers():
            return [LoadDriverSpec(name="my-server", factory="my_plugin.bench:MyServerDriver",
                                   backends=("my-server",))]
    """

    name: str = attrs.field(validator=_check_name)
    factory: str = attrs.field(validator=_check_reference)
    backends: tuple[str, ...] = attrs.field(default=(), converter=_names)
    description: str = ""
    distribution: str | None = attrs.field(default=None, eq=False)

    def load(self) -> Any:
        """Import and return the factory."""
        return load_object(self.factory)


@attrs.frozen
class PluginInfo:
    """What ``llamatelemetry plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    #: ``"loaded"``, ``"failed"`` (it raised on import or implements a hook no spec defines),
    #: ``"blocked"`` (LLAMATELEMETRY_DISABLE_PLUGINS), ``"not allowed"`` (missing from LLAMATELEMETRY_PLUGINS),
    #: ``"builtin"`` or ``"registered"`` (by code).
    status: str
    error: str | None = None
    provides: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
