"""The errors the llama.cpp server client raises; each message says what went wrong and what to do next.

Every class derives from ``LlamaCppError`` (a ``llamatelemetry.errors.LlamaTelemetryError``). An
HTTP error status is a ``LlamaCppHTTPError``: a plain one is a request the server rejected (4xx),
``LlamaCppServerError`` and its subclasses are failures on the server's side (5xx). Messages never
contain the API key.

The failures any server backend can have also derive from the core's class for them, so a caller
catches them the same way whatever the backend: ``ServerUnavailableError`` is a
``llamatelemetry.errors.ServerUnavailableError``, ``ServerTimeoutError`` a
``llamatelemetry.errors.ServerTimeoutError`` and ``ContextSizeExceededError`` a
``llamatelemetry.errors.ContextOverflowError``.
"""

from __future__ import annotations

import json
from typing import Any

from llamatelemetry import errors as core
from llamatelemetry.errors import LlamaTelemetryError

__all__ = [
    "LlamaCppError",
    "ServerUnavailableError",
    "ServerTimeoutError",
    "LlamaCppHTTPError",
    "AuthenticationError",
    "ContextSizeExceededError",
    "LlamaCppServerError",
    "ServerFeatureDisabledError",
    "ServerLoadingError",
    "StreamProtocolError",
    "http_error",
]

#: How much of a non-JSON error body goes into a message.
_MAX_BODY_CHARS = 300


class LlamaCppError(LlamaTelemetryError):
    """Base class of the errors raised by the llama.cpp server client."""


class ServerUnavailableError(LlamaCppError, core.ServerUnavailableError):
    """No llama.cpp server answers at the URL (connection refused, unknown host, connect timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason, message=(
            f"Cannot reach the llama.cpp server at {url} ({reason}). Start it first (for example "
            f"`llama-server -m model.gguf --port {_port_hint(url)}`, or "
            "llamatelemetry.llama.ServerManager().start_server(model_path)), or pass the right base_url."
        ))


class ServerTimeoutError(LlamaCppError, core.ServerTimeoutError):
    """The server accepted the connection but did not answer in time."""

    def __init__(self, url: str, method: str, path: str, timeout: float | None, phase: str) -> None:
        self.method = method
        self.path = path
        self.phase = phase
        limit = f"{timeout:g} s" if timeout is not None else "the configured limit"
        super().__init__(url, timeout, message=(
            f"The llama.cpp server at {url} did not answer {method} {path} within {limit} ({phase} timeout). "
            "Generation may be slow on this machine: raise timeout=..., or lower max_tokens."
        ))


class LlamaCppHTTPError(LlamaCppError):
    """The server answered with an HTTP error status; raised as is for a rejected request (4xx).

    ``status`` is the HTTP status, ``message`` and ``error_type`` are the server's own (from its
    ``{"error": {"message": ..., "type": ...}}`` body), ``path`` the endpoint that was called.
    """

    hint = "Check the request: the server's message says what it could not accept."

    def __init__(self, status: int, message: str, *, error_type: str | None = None, method: str = "POST",
                 path: str = "", url: str = "", body: dict[str, Any] | None = None) -> None:
        self.status = status
        self.message = message
        self.error_type = error_type
        self.method = method
        self.path = path
        self.url = url
        #: The server's ``error`` object, for fields such as ``n_ctx``.
        self.body: dict[str, Any] = body or {}
        kind = f", {error_type}" if error_type else ""
        super().__init__(f"llama.cpp server at {url} answered {method} {path} with HTTP {status}{kind}: "
                         f"{message}. {self.hint}")


class AuthenticationError(LlamaCppHTTPError):
    """The server requires an API key and the one sent is missing or wrong (401/403)."""

    hint = "Pass api_key= with one of the keys the server was started with (--api-key)."


class ContextSizeExceededError(LlamaCppHTTPError, core.ContextOverflowError):
    """The prompt does not fit in a slot's context (llama.cpp's ``exceed_context_size_error``).

    ``prompt_tokens`` and ``n_ctx`` (a slot's context size) are the server's figures, when it gave them.
    """

    hint = ("Shorten the prompt or max_tokens, or restart the server with a larger context (-c/--ctx-size; "
            "each of the --parallel slots gets ctx-size / parallel tokens).")

    def __init__(self, status: int, message: str, *, error_type: str | None = None, method: str = "POST",
                 path: str = "", url: str = "", body: dict[str, Any] | None = None) -> None:
        super().__init__(status, message, error_type=error_type, method=method, path=path, url=url, body=body)
        # The core class's sizes, from the server's error object (set after: the HTTP message comes first).
        self.prompt_tokens = _int_field(self.body, "n_prompt_tokens")
        self.n_ctx = _int_field(self.body, "n_ctx")

    @property
    def n_prompt_tokens(self) -> int | None:
        """Prompt tokens the server counted, when it said (the same as ``prompt_tokens``)."""
        return self.prompt_tokens


class LlamaCppServerError(LlamaCppHTTPError):
    """The server failed on its side (5xx)."""

    hint = "See the server's log for the cause."


class ServerFeatureDisabledError(LlamaCppServerError):
    """The endpoint exists but is switched off on this server (501, e.g. /metrics without --metrics)."""

    hint = "Restart the server with the flag its message names."


class ServerLoadingError(LlamaCppServerError):
    """The server is up but still loading the model (503); it answers once loading finishes."""

    hint = "Wait for /health to answer 200, or give the client retries= to wait for it."


class StreamProtocolError(LlamaCppError):
    """A streamed (SSE) response was malformed or ended before its end marker."""

    def __init__(self, url: str, path: str, problem: str) -> None:
        self.url = url
        self.path = path
        self.problem = problem
        super().__init__(f"The stream from {url}{path} is broken: {problem}. The response is incomplete; "
                         "retry the request, and check the server's log if it happens again.")


def _int_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _port_hint(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    return str(port or 8090)


def _parse_error_body(content: bytes | str) -> tuple[str, str | None, dict[str, Any]]:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message")
            error_type = error.get("type")
            return (str(message) if message is not None else text.strip()[:_MAX_BODY_CHARS],
                    str(error_type) if error_type is not None else None, error)
        if isinstance(error, str):
            return error, None, {}
    return text.strip()[:_MAX_BODY_CHARS] or "(empty body)", None, {}


def http_error(status: int, content: bytes | str, *, method: str, path: str, url: str,
               secret: str | None = None) -> LlamaCppHTTPError:
    """The error for an HTTP error response: the class follows the status and llama.cpp's error type.

    ``secret`` (the API key) is removed from the server's message should the server echo it.
    """
    message, error_type, body = _parse_error_body(content)
    if secret:
        message = message.replace(secret, "***")
    cls: type[LlamaCppHTTPError]
    if status in (401, 403) or error_type == "authentication_error":
        cls = AuthenticationError
    elif error_type == "exceed_context_size_error":
        cls = ContextSizeExceededError
    elif status == 503 and (error_type == "unavailable_error" or "loading" in message.lower()):
        cls = ServerLoadingError
    elif status == 501 or error_type == "not_supported_error":
        cls = ServerFeatureDisabledError
    elif status >= 500:
        cls = LlamaCppServerError
    else:
        cls = LlamaCppHTTPError
    return cls(status, message, error_type=error_type, method=method, path=path, url=url, body=body)
