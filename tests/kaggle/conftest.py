"""A FAKE Kaggle for the Kaggle plugin's tests: this machine is not a Kaggle notebook.

- ``fake_kaggle_secrets``: a FAKE ``kaggle_secrets`` module (Kaggle's class and method names:
  ``UserSecretsClient().get_secret(label)``, ``CredentialError``, ``BackendError``), written to a
  temporary folder put on ``sys.path``. Kaggle's real module asks Kaggle's service; the fake reads
  a JSON file beside it, which a test rewrites (``.set(...)``), and counts its calls there.
- ``kaggle_root``: a FAKE ``/kaggle`` tree (``kaggle/working``, ``kaggle/input``, ``etc/build_date``,
  CUDA library folders) under a temporary root, passed to ``auto_configure(root=...)``.
- ``on_kaggle``: Kaggle's environment variables, set for one test.
- ``install_gpus``: FAKE NVML devices (``llamatelemetry.testing.fake_nvml``) as ``pynvml``: two T4s
  (15,360 MiB, 70 W, compute 7.5 answered by NVML), one T4, one P100 (whose compute capability
  NVML does not answer), or none.
- ``open_port`` / ``closed_port``: a real local listener and a port nothing listens on, for the
  internet check.
"""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kaggle_fakes import (
    FAKE_KAGGLE_SECRETS_MODULE,
    KAGGLE_VARIABLES,
    OTEL_VARIABLES,
    FakeKaggleSecrets,
    fake_p100,
    fake_t4,
)

from llamatelemetry.testing.fake_nvml import FakeNVML


@pytest.fixture(autouse=True)
def _no_kaggle_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Kaggle or OTLP variable of the developer's shell leaks into a test."""
    for name in (*KAGGLE_VARIABLES, *OTEL_VARIABLES):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_previous_auto_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the record of another test's auto_configure() (the resource hook reuses it)."""
    from llamatelemetry_kaggle import configure

    monkeypatch.setattr(configure, "_last", None)


@pytest.fixture
def fake_kaggle_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKaggleSecrets]:
    """The FAKE ``kaggle_secrets`` module on ``sys.path``, with no secret set yet."""
    folder = tmp_path / "fake-kaggle-site"
    folder.mkdir()
    (folder / "kaggle_secrets.py").write_text(textwrap.dedent(FAKE_KAGGLE_SECRETS_MODULE))
    monkeypatch.delitem(sys.modules, "kaggle_secrets", raising=False)
    monkeypatch.syspath_prepend(str(folder))
    yield FakeKaggleSecrets(folder)
    sys.modules.pop("kaggle_secrets", None)


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    """A FAKE Kaggle file system under a temporary root."""
    root = tmp_path / "fake-kaggle-root"
    for folder in ("kaggle/working", "kaggle/input/smollm2", "etc", "usr/local/cuda/lib64", "usr/local/nvidia/lib64"):
        (root / folder).mkdir(parents=True)
    (root / "etc" / "build_date").write_text("20261115-093000\n")
    return root


@pytest.fixture
def on_kaggle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables Kaggle sets in an interactive notebook (FAKE values)."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "https://dp.kaggle.net")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_PROJECT", "kaggle-161607")
    monkeypatch.setenv("KAGGLE_URL_BASE", "https://www.kaggle.com")
    monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "fake-kernel-jwt")
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "")


@pytest.fixture
def install_gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], FakeNVML]:
    """Install FAKE NVML GPUs as ``pynvml``: ``"t4x2"``, ``"t4"``, ``"p100"`` or ``"none"``."""

    def install(kind: str) -> FakeNVML:
        fake: FakeNVML
        if kind == "t4x2":
            fake = FakeNVML([fake_t4("GPU-t4-aaaa"), fake_t4("GPU-t4-bbbb")])
        elif kind == "t4":
            fake = FakeNVML([fake_t4("GPU-t4-aaaa")])
        elif kind == "p100":
            # NVML cannot say here: the plugin's product-name table answers.
            fake = FakeNVML([fake_p100()])
        elif kind == "none":
            fake = FakeNVML([])
        else:
            raise ValueError(kind)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


@pytest.fixture
def open_port() -> Iterator[tuple[str, int]]:
    """A real local listener: the internet check succeeds against it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield "127.0.0.1", int(server.getsockname()[1])
    server.close()


@pytest.fixture
def closed_port() -> tuple[str, int]:
    """A local port nothing listens on: the internet check fails against it, at once."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return "127.0.0.1", port
