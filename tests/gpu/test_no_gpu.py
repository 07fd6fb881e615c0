"""Without a GPU: the real NVML bindings find no library, and everything goes on quietly or says why."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest
from gpu_helpers import EchoBackend

import llamatelemetry
from llamatelemetry.gpu import GPUSampler, GPUSnapshot, GPUSpanEnricher, NoGPUError, list_devices
from llamatelemetry.inference import InferenceEngine, InferenceRequest
from llamatelemetry.plugins import get_plugin_manager
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

GPU_PRESENT = bool(list_devices())
# On a GPU machine these skip by design, so CI=true keeps them skips (tests/conftest.py).
pytestmark = pytest.mark.may_skip("the no-GPU path runs for real only on a machine without a GPU")
real_no_gpu = pytest.mark.skipif(GPU_PRESENT, reason="this machine has a GPU: the no-GPU path cannot run for real")


@pytest.fixture
def no_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without nvidia-smi."""
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.fixture(params=["library missing", "module missing"])
def no_nvml(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, no_smi: None) -> str:
    """NVML absent: for real (the installed bindings find no libnvidia-ml), or the bindings not installed."""
    if request.param == "library missing":
        if GPU_PRESENT:
            pytest.skip("this machine has a GPU: the no-GPU path cannot run for real")
        pytest.importorskip("pynvml")
    else:
        monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    return str(request.param)


def test_list_devices_is_empty_and_quiet(no_nvml: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llamatelemetry"):
        assert list_devices() == []
    assert not caplog.records, "no GPU is not worth a message"


def test_capture_raises_a_clear_no_gpu_error(no_nvml: str) -> None:
    with pytest.raises(NoGPUError) as raised:
        GPUSnapshot.capture(0)
    message = str(raised.value)
    expected = "libnvidia-ml.so.1" if no_nvml == "library missing" else "pip install nvidia-ml-py"
    assert expected in message
    assert "nvidia-smi is not on PATH" in message
    assert isinstance(raised.value, RuntimeError), "callers may catch the builtin"


def test_sampler_cannot_open(no_nvml: str) -> None:
    with pytest.raises(NoGPUError):
        GPUSampler.open()


@real_no_gpu
def test_init_with_gpu_warns_once_and_goes_on(no_smi: None, caplog: pytest.LogCaptureFixture) -> None:
    with fresh_plugin_manager():
        _init_twice_without_gpu(caplog)


def _init_twice_without_gpu(caplog: pytest.LogCaptureFixture) -> None:
    threads_before = threading.active_count()
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        for _ in range(2):  # a second init()/shutdown() cycle must not warn again
            with InMemoryTelemetry(enable_gpu=True) as telemetry, InferenceEngine(EchoBackend()) as engine:
                assert not get_plugin_manager().has_impls("llamatelemetry_request_start")
                result = engine.generate(InferenceRequest(messages=[{"role": "user", "content": "one two"}]))
                assert threading.active_count() == threads_before, "no sampler thread without a GPU"
                span = telemetry.span("chat echo-model")
    assert result.output_tokens == 2
    assert not any(key.startswith("llamatelemetry.gpu.") for key in span.attributes or {})
    warnings = [r.getMessage() for r in caplog.records if "enable_gpu" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "Continuing without GPU telemetry" in warnings[0] and "libnvidia-ml.so.1" in warnings[0]


def test_without_enable_gpu_nothing_is_added_to_the_hot_path() -> None:
    with fresh_plugin_manager() as pm, InMemoryTelemetry():
        assert not pm.has_impls("llamatelemetry_request_start"), "GPU hooks only when GPU telemetry runs"
        assert not pm.has_impls("llamatelemetry_request_end")


def test_enrich_without_gpu_leaves_the_span_alone_and_warns_once(no_nvml: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    enricher = GPUSpanEnricher(device_id=0)
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"), fresh_plugin_manager(), \
            InMemoryTelemetry() as telemetry:
        for _ in range(3):
            with llamatelemetry.span("work") as span, enricher.enrich(span):
                pass
        spans = telemetry.spans()
    assert len(spans) == 3
    assert not [key for s in spans for key in s.attributes or {} if key.startswith("llamatelemetry.gpu")]
    assert len([r for r in caplog.records if "GPUSpanEnricher" in r.getMessage()]) == 1
