"""Reading the OTLP endpoint and headers from Kaggle's user secrets, without ever showing them.

Kaggle's ``kaggle_secrets.UserSecretsClient().get_secret(label)`` asks Kaggle's service (it needs
the notebook's internet). Off Kaggle it raises a credential error; with internet off, a
``ConnectionError``; for a label not attached to the notebook, a backend error. Every one of
those ends here as a ``SecretsOutcome`` with a clear message (naming labels, never values) and
no exception. Exception messages from the client are not repeated: they may quote the service's
answer.
"""

from __future__ import annotations

import importlib
import logging
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from llamatelemetry.config import parse_headers
from llamatelemetry.errors import ConfigurationError

__all__ = ["SecretsOutcome", "read_otlp_secrets", "DEFAULT_ENDPOINT_LABEL", "DEFAULT_HEADERS_LABEL",
           "summarize_headers", "redact_endpoint"]

log = logging.getLogger("llamatelemetry.kaggle")

DEFAULT_ENDPOINT_LABEL = "OTEL_EXPORTER_OTLP_ENDPOINT"
DEFAULT_HEADERS_LABEL = "OTEL_EXPORTER_OTLP_HEADERS"

Status = Literal["read", "no_client", "not_attached", "internet_off", "missing", "invalid", "timeout"]


def summarize_headers(headers: Mapping[str, str]) -> str:
    """``<2 set>``: how many headers, never their names' values."""
    return f"<{len(headers)} set>" if headers else "<none>"


def redact_endpoint(endpoint: str | None) -> str:
    """``https://host:port`` of an endpoint: its path, query and user info may carry a token."""
    if not endpoint:
        return "None"
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    port = f":{parsed.port}" if parsed.port else ""
    scheme = f"{parsed.scheme}://" if parsed.scheme else ""
    hidden = "/..." if (parsed.path.strip("/") or parsed.query or parsed.username) else ""
    return f"{scheme}{parsed.hostname}{port}{hidden}"


@attrs.frozen
class SecretsOutcome:
    """What reading the secrets gave: the values (hidden from ``repr``) and a status with its message."""

    status: Status
    #: Why the values are missing, naming labels only; ``None`` when everything was read.
    message: str | None = None
    endpoint: str | None = attrs.field(default=None, repr=redact_endpoint)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=summarize_headers)


def _kind(exc: BaseException) -> str:
    # Kaggle's classes live in kaggle_secrets (CredentialError, BackendError, ValidationError): match by name,
    # since importing them would fail wherever the module is not Kaggle's.
    if isinstance(exc, ConnectionError):
        return "internet_off"
    if type(exc).__name__ == "CredentialError":
        return "not_attached"
    return "missing"


def _call(function: Any, *args: Any, timeout_s: float) -> Any:
    """``function(*args)`` bounded by ``timeout_s`` (Kaggle's client waits up to 40 s on its own)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(function(*args))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="llamatelemetry-kaggle-secrets", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError
    return result[0]


def _looks_like_endpoint(value: str) -> bool:
    try:
        parsed = urllib.parse.urlsplit(value)
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def read_otlp_secrets(*, endpoint_label: str = DEFAULT_ENDPOINT_LABEL, headers_label: str = DEFAULT_HEADERS_LABEL,
                      timeout_s: float = 10.0) -> SecretsOutcome:
    """Read the endpoint (required) and headers (optional) from Kaggle's user secrets; never raises."""
    try:
        module = importlib.import_module("kaggle_secrets")
        client = module.UserSecretsClient()
    except ImportError:
        return SecretsOutcome("no_client", "Kaggle's kaggle_secrets module is not importable here")
    except Exception as exc:
        return SecretsOutcome(_kind(exc),  # type: ignore[arg-type]
                              "Kaggle's secrets service refused the notebook (no secrets token: "
                              "is this a Kaggle notebook with Add-ons > Secrets enabled?)")
    try:
        endpoint = str(_call(client.get_secret, endpoint_label, timeout_s=timeout_s)).strip()
    except TimeoutError:
        return SecretsOutcome("timeout", f"Kaggle's secrets service did not answer within {timeout_s:.0f} s")
    except Exception as exc:
        kind = _kind(exc)
        message = {
            "internet_off": "the notebook's internet is off, so Kaggle secrets cannot be read "
                            "(turn it on: Settings > Internet)",
            "not_attached": f"the secret {endpoint_label!r} is not attached to this notebook "
                            "(Add-ons > Secrets: add it and tick it for this notebook)",
            "missing": f"the secret {endpoint_label!r} was not found (Add-ons > Secrets: add it and attach it)",
        }[kind]
        return SecretsOutcome(kind, message)  # type: ignore[arg-type]
    if not endpoint:
        return SecretsOutcome("missing", f"the secret {endpoint_label!r} is empty")
    if not _looks_like_endpoint(endpoint):
        # Checked here because init() would quote a bad endpoint in its error.
        return SecretsOutcome("invalid", f"the secret {endpoint_label!r} is not an http(s):// URL with a host "
                                         "(write it like https://collector.example.com:4318)")
    try:
        raw_headers = str(_call(client.get_secret, headers_label, timeout_s=timeout_s))
    except Exception as exc:
        # Optional: many collectors take no header. Said at info level; the export still goes out.
        log.info("Kaggle secret %r not read (%s): exporting without headers", headers_label, type(exc).__name__)
        raw_headers = ""
    try:
        headers = parse_headers(raw_headers, source=f"the Kaggle secret {headers_label!r}")
    except ConfigurationError as exc:
        # parse_headers names the position, never the value.
        return SecretsOutcome("invalid", str(exc))
    return SecretsOutcome("read", None, endpoint=endpoint, headers=headers)
