"""FAKE Kaggle pieces the Kaggle plugin's tests import (the fixtures in conftest.py use them too).

A module of its own, not conftest.py: several test folders have a conftest, and ``from conftest
import ...`` picks whichever was imported first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamatelemetry.testing.fake_nvml import FakeDevice, FakeReading

MIB = 1024 * 1024

KAGGLE_VARIABLES = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL", "KAGGLE_DATA_PROXY_PROJECT", "KAGGLE_URL_BASE",
                    "KAGGLE_USER_SECRETS_TOKEN", "KAGGLE_KERNEL_INTEGRATIONS", "KAGGLE_IAP_TOKEN")
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_PROTOCOL",
                  "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED",
                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                  "LLAMATELEMETRY_OUTPUT_FILE", "LLAMATELEMETRY_ENABLE_GPU", "CUDA_VISIBLE_DEVICES")

FAKE_KAGGLE_SECRETS_MODULE = '''
"""FAKE kaggle_secrets for tests: Kaggle's names, answers from fake_kaggle_secrets.json beside this file."""

import json
import os
import pathlib

_STATE = pathlib.Path(__file__).with_name("fake_kaggle_secrets.json")


class CredentialError(Exception):
    pass


class BackendError(Exception):
    pass


class ValidationError(Exception):
    pass


def _state():
    return json.loads(_STATE.read_text())


def _count(label):
    state = _state()
    state["calls"].append(label)
    _STATE.write_text(json.dumps(state))
    return state


class UserSecretsClient:
    def __init__(self):
        # Kaggle's client needs the kernel's token, and raises this without it.
        if os.getenv("KAGGLE_USER_SECRETS_TOKEN") is None:
            raise CredentialError("A JWT Token is required to use the UserSecretsClient, "
                                  "but none found in environment variable KAGGLE_USER_SECRETS_TOKEN")

    def get_secret(self, label):
        if not label:
            raise ValidationError("Label must be non-empty.")
        state = _count(label)
        if not state["internet"]:
            raise ConnectionError("Connection error trying to communicate with service.")
        if label not in state["secrets"]:
            # Kaggle answers an unknown label with an unsuccessful response, quoting it.
            raise BackendError(f"Unexpected response from the service. Response: {{'wasSuccessful': False}}.")
        return state["secrets"][label]
'''


class FakeKaggleSecrets:
    """Controls the FAKE ``kaggle_secrets`` module: which secrets exist, whether internet is on, what was asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / "fake_kaggle_secrets.json"
        self.set({})

    def set(self, secrets: dict[str, str], *, internet: bool = True) -> None:
        """The secrets attached to the fake notebook, and whether the fake service is reachable."""
        self.state.write_text(json.dumps({"secrets": secrets, "internet": internet, "calls": []}))

    @property
    def calls(self) -> list[str]:
        """The labels asked for so far."""
        return list(json.loads(self.state.read_text())["calls"])


def fake_t4(uuid: str) -> FakeDevice:
    """A FAKE Tesla T4 as Kaggle has them: 15,360 MiB, 70 W cap, compute capability 7.5 (NVML says so)."""
    return FakeDevice("Tesla T4", uuid, 15360 * MIB, readings=[FakeReading(memory_used_bytes=300 * MIB,
                                                                           power_mw=9000, temperature_c=40)],
                      power_limit_mw=70_000, compute_capability=(7, 5))


def fake_p100() -> FakeDevice:
    """A FAKE Tesla P100 (16 GB, 250 W cap) whose driver does not say its compute capability (NotSupported)."""
    return FakeDevice("Tesla P100-PCIE-16GB", "GPU-p100-0000", 16384 * MIB,
                      readings=[FakeReading(memory_used_bytes=0, power_mw=25000)], power_limit_mw=250_000)


def everything_said(*texts: Any) -> str:
    """One string of everything given (for 'the canary appears nowhere' checks)."""
    return "\n".join(str(text) for text in texts)
