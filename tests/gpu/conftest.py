"""GPU test fixtures: FAKE NVML devices (this machine has no GPU; see gpu_helpers.py) and a clean GPU environment."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
from gpu_helpers import T4_UUID_2, t4

from llamatelemetry.gpu import enricher, nvml
from llamatelemetry.testing.fake_nvml import FakeNVML


@pytest.fixture(autouse=True)
def _gpu_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU selection from the developer's shell leaks into a test."""
    for name in ("CUDA_VISIBLE_DEVICES", "LLAMATELEMETRY_GPU_DEVICES", "LLAMATELEMETRY_GPU_SAMPLE_INTERVAL",
                 "LLAMATELEMETRY_ENABLE_GPU", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                 "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def install_fake(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeNVML], FakeNVML]:
    """Make ``import pynvml`` give the fake, and drive readings and span edges with its clock."""

    def install(fake: FakeNVML) -> FakeNVML:
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(nvml, "_monotonic", fake.clock)
        monkeypatch.setattr(enricher, "_monotonic", fake.clock)
        return fake

    return install


@pytest.fixture
def fake_t4(install_fake: Callable[[FakeNVML], FakeNVML]) -> Iterator[FakeNVML]:
    """One FAKE T4, installed as pynvml."""
    fake = install_fake(FakeNVML([t4()]))
    yield fake
    assert fake.initialized == 0, "every nvmlInit must be matched by an nvmlShutdown"


@pytest.fixture
def fake_t4x2(install_fake: Callable[[FakeNVML], FakeNVML]) -> Iterator[FakeNVML]:
    """Two FAKE T4s (Kaggle's T4 x2 layout), installed as pynvml."""
    fake = install_fake(FakeNVML([t4(), t4(T4_UUID_2, pid=4243)]))
    yield fake
    assert fake.initialized == 0, "every nvmlInit must be matched by an nvmlShutdown"
