"""Is the notebook's internet on? One bounded TCP connect, so a notebook with internet off never waits long."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from collections.abc import Mapping

__all__ = ["internet_reachable", "default_probe_address"]


def default_probe_address(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Kaggle's own web address (``KAGGLE_URL_BASE``, default www.kaggle.com:443): the secrets service lives there."""
    env = os.environ if environ is None else environ
    parsed = urllib.parse.urlsplit(env.get("KAGGLE_URL_BASE") or "https://www.kaggle.com")
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    return parsed.hostname or "www.kaggle.com", port


def internet_reachable(address: tuple[str, int], timeout_s: float = 1.5) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout_s`` (name look-up included)."""
    outcome: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    # The name look-up is not bounded by the socket timeout: a daemon thread bounds the whole attempt.
    thread = threading.Thread(target=connect, name="llamatelemetry-kaggle-internet-check", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.25)
    return bool(outcome and outcome[0])
