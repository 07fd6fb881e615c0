"""The exceptions llamatelemetry raises; each message says what went wrong and what to do next."""

from __future__ import annotations

__all__ = [
    "LlamaTelemetryError",
    "ValidationError",
    "PluginNotInstalledError",
    "PluginFeatureMissingError",
    "ExtraNotInstalledError",
    "BackendNotFoundError",
    "BackendStartError",
    "BackendNotStartedError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ContextOverflowError",
    "ChatTemplateError",
    "ServerUnavailableError",
    "ServerTimeoutError",
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

    The message is the exact ``pip install`` command that provides it. ``distribution`` is the
    plugin distribution the core's ``extra`` installs and ``module`` its top-level module, when known.
    """

    def __init__(self, feature: str, extra: str, *, distribution: str | None = None,
                 module: str | None = None) -> None:
        self.feature = feature
        self.extra = extra
        self.distribution = distribution
        self.install_command = f'pip install "llamatelemetry-core[{extra}]"'
        plugin = f"the {distribution} plugin" if distribution else f"the plugin of llamatelemetry-core[{extra}]"
        super().__init__(f"{feature} needs {plugin}, which is not installed. Install it with: {self.install_command}",
                         name=module)


class PluginFeatureMissingError(LlamaTelemetryError, ImportError):
    """The plugin distribution is installed but does not provide the feature (too old a version)."""

    def __init__(self, feature: str, distribution: str, version: str | None) -> None:
        self.feature = feature
        self.distribution = distribution
        super().__init__(
            f"{feature} is not provided by the installed {distribution} {version or '(unknown version)'}. "
            f'Upgrade it with: pip install --upgrade "{distribution}"'
        )


class ExtraNotInstalledError(LlamaTelemetryError, ImportError):
    """A core feature needs a package of one of the core's optional extras, and it is not installed.

    The message is the exact ``pip install`` command (``install_command``).
    """

    def __init__(self, feature: str, package: str, extra: str) -> None:
        self.feature = feature
        self.package = package
        self.extra = extra
        self.install_command = f'pip install "llamatelemetry-core[{extra}]"'
        super().__init__(f"{feature} needs the {package} package, which is not installed. Install it with: "
                         f"{self.install_command}", name=package)


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


# Failures a caller may want to catch whatever the backend: every backend raises these (or a
# subclass of its own with a more specific message), so ``except ContextOverflowError`` works for
# llama.cpp in process, a llama.cpp server and transformers alike.


class ModelLoadError(LlamaTelemetryError, RuntimeError):
    """A backend's ``start()`` could not load the model.

    Raised for a model file or folder the engine rejects (an unknown architecture, a damaged or
    truncated file, not enough memory for the weights or the context). Its subclass
    ``ModelNotFoundError`` is a path that names no model at all. Through ``InferenceEngine`` or
    ``create_engine`` it arrives as the ``__cause__`` of a ``BackendStartError``.
    """


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path names no model: nothing is there, or a file where a folder is needed (or the reverse).

    ``path`` is the path given (``None`` when none was).
    """

    path: str | None = None


class ContextOverflowError(LlamaTelemetryError, ValueError):
    """A request's prompt does not fit in the model's context window, with room for one generated token.

    Raised by ``generate()`` (in process, before any token is computed; from a server, when it
    refuses the prompt). ``prompt_tokens`` and ``n_ctx`` are the prompt's length and the window
    in tokens, ``None`` where the backend does not know them. Backends raise a subclass that
    names their own setting for a larger window (``remedy``)::

        raise ContextOverflowError(prompt_tokens=900, n_ctx=512)
    """

    #: What to do besides shortening the prompt; subclasses name their backend's setting.
    remedy = "start the backend with a larger context window"

    def __init__(self, message: str | None = None, *, prompt_tokens: int | None = None,
                 n_ctx: int | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        if message is None:
            if prompt_tokens is not None and n_ctx is not None:
                message = (f"The prompt is {prompt_tokens} tokens but the context window holds {n_ctx} (the prompt "
                           f"and at least one generated token must fit): shorten the prompt, or {self.remedy}.")
            else:
                message = f"The prompt does not fit in the context window: shorten the prompt, or {self.remedy}."
        super().__init__(message)


class ChatTemplateError(LlamaTelemetryError, ValueError):
    """The model's chat template could not turn a request's messages into a prompt.

    Raised by ``generate()`` for a chat request when the model has no chat template (and none was
    given) or its template rejects the messages (some need alternating user/assistant roles).
    Sending the request with ``operation="text_completion"`` skips the template.
    """


class ServerUnavailableError(LlamaTelemetryError, ConnectionError):
    """No inference server answers at a backend's URL (connection refused, unknown host, connect timeout).

    Raised by a server backend's ``start()`` (its health check) or ``generate()``. ``url`` is the
    server's URL and ``reason`` what the connection attempt said.
    """

    def __init__(self, url: str, reason: str, *, message: str | None = None) -> None:
        self.url = url
        self.reason = reason
        super().__init__(message or f"Cannot reach the inference server at {url} ({reason}). Start the server "
                                    "first, or pass the right URL.")


class ServerTimeoutError(LlamaTelemetryError, TimeoutError):
    """An inference server accepted the connection but did not answer within the client's timeout.

    ``url`` is the server's URL and ``timeout`` the limit in seconds (``None``: the client's default).
    """

    def __init__(self, url: str, timeout: float | None, *, message: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        limit = f"{timeout:g} s" if timeout is not None else "the configured limit"
        super().__init__(message or f"The inference server at {url} did not answer within {limit}. Generation may "
                                    "be slow on this machine: raise the timeout, or lower max_tokens.")


class ConfigurationError(LlamaTelemetryError, ValueError):
    """``init()`` or an ``OTEL_*``/``LLAMATELEMETRY_*`` variable holds a value that cannot be used."""


class IncompleteEventsError(LlamaTelemetryError, ValueError):
    """A metric was asked of an ``InferenceEvents`` that lacks the timestamps it needs."""


class ArtifactVerificationError(LlamaTelemetryError):
    """An artifact in a manifest is missing or its content changed since it was recorded."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Artifact verification failed:\n  " + "\n  ".join(problems))
