"""The exceptions llamatelemetry raises; each message says what went wrong and what to do next."""

from __future__ import annotations

__all__ = [
    "LlamaTelemetryError",
    "ValidationError",
    "PluginNotInstalledError",
    "PluginFeatureMissingError",
    "BackendNotFoundError",
    "BackendStartError",
    "BackendNotStartedError",
    "ConfigurationError",
    "IncompleteEventsError",
    "ArtifactVerificationError",
]


class LlamaTelemetryError(Exception):
    """Base class of every error raised by llamatelemetry."""


class ValidationError(LlamaTelemetryError, ValueError):
    """A request or configuration field holds a value outside its allowed range.

    ``field`` names the field, ``allowed`` describes the allowed values and ``value`` is what
    was given (never the content of a prompt).
    """

    def __init__(self, owner: str, field: str, value: object, allowed: str) -> None:
        self.owner = owner
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{owner}.{field}={value!r} is invalid: {field} must be {allowed}.")


class PluginNotInstalledError(LlamaTelemetryError, ImportError):
    """A feature belongs to a plugin distribution that is not installed.

    The message is the exact ``pip install`` command that provides it.
    """

    def __init__(self, feature: str, extra: str, *, distribution: str | None = None) -> None:
        self.feature = feature
        self.extra = extra
        self.distribution = distribution or f"llamatelemetry-{extra}"
        self.install_command = f'pip install "llamatelemetry-core[{extra}]"'
        super().__init__(
            f"{feature} needs the {self.distribution} plugin, which is not installed. "
            f"Install it with: {self.install_command}",
            name=self.distribution.replace("-", "_"),
        )


class PluginFeatureMissingError(LlamaTelemetryError, ImportError):
    """The plugin distribution is installed but does not provide the feature (too old a version)."""

    def __init__(self, feature: str, distribution: str, version: str | None) -> None:
        self.feature = feature
        self.distribution = distribution
        super().__init__(
            f"{feature} is not provided by the installed {distribution} {version or '(unknown version)'}. "
            f'Upgrade it with: pip install --upgrade "{distribution}"'
        )


class BackendNotFoundError(LlamaTelemetryError, LookupError):
    """No installed plugin registers a backend of the requested name."""

    def __init__(self, name: str, available: list[str], install_hint: str | None) -> None:
        self.name = name
        self.available = available
        listing = ", ".join(sorted(available)) if available else "none"
        hint = f" Install it with: {install_hint}" if install_hint else (
            " A third-party backend is registered by a plugin through the 'llamatelemetry' entry-point"
            " group (hook llamatelemetry_register_backends)."
        )
        super().__init__(f"No backend named {name!r} is installed (installed backends: {listing}).{hint}")


class BackendStartError(LlamaTelemetryError, RuntimeError):
    """A backend the user asked for by name could not be created or started."""


class BackendNotStartedError(LlamaTelemetryError, RuntimeError):
    """``generate()`` was called on an engine or backend before ``start()``."""


class ConfigurationError(LlamaTelemetryError, ValueError):
    """``init()`` or an ``OTEL_*``/``LLAMATELEMETRY_*`` variable holds a value that cannot be used."""


class IncompleteEventsError(LlamaTelemetryError, ValueError):
    """A metric was asked of an ``InferenceEvents`` that lacks the timestamps it needs."""


class ArtifactVerificationError(LlamaTelemetryError):
    """An artifact in a manifest is missing or its content changed since it was recorded."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Artifact verification failed:\n  " + "\n  ".join(problems))
