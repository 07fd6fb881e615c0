"""The torch GPU span enricher: its hooks registered once CUDA is in use, silent without CUDA, exact with it.

CUDA cannot run here, so one test drives the enricher with ``FakeCudaModule``, a stand-in for
``torch.cuda`` named as such; the ``gpu``-marked test runs the real thing on an NVIDIA GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.types import SamplingParams
from llamatelemetry.plugins import get_plugin_manager
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_transformers import gpu
from llamatelemetry_transformers import semconv as names
from llamatelemetry_transformers.backend import TransformersBackend

REQUEST = InferenceRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=3,
                           sampling=SamplingParams(temperature=0.0))


class FakeCudaModule:
    """A fake ``torch.cuda`` (there is no GPU here): initialized, device 1, memory figures set by the test."""

    def __init__(self) -> None:
        self.stats_calls = 0
        self.allocated, self.reserved, self.peak = 1000, 4096, 1500

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> int:
        return 1

    def memory_stats_as_nested_dict(self, device: int) -> dict[str, Any]:
        assert device == 1
        self.stats_calls += 1
        return {"allocated_bytes": {"all": {"current": self.allocated, "peak": self.peak}},
                "reserved_bytes": {"all": {"current": self.reserved}}}


def _cuda_attributes(span: Any) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("llamatelemetry.torch.cuda.")}


HOOKS_NAME = "llamatelemetry-transformers.cuda-memory"


def _hook_plugins() -> list[str]:
    pm = get_plugin_manager()
    pm.ensure_loaded()
    return [impl.plugin_name for hook in ("llamatelemetry_request_start", "llamatelemetry_request_end")
            for impl in getattr(pm.pluggy_manager.hook, hook).get_hookimpls()]


@pytest.fixture
def hooks_out() -> Iterator[None]:
    """The enricher's hooks unregistered before and after the test (they stay for a process's life)."""

    def unregister() -> None:
        pm = get_plugin_manager()
        if pm.is_registered(gpu.REQUEST_HOOKS):
            pm.unregister(gpu.REQUEST_HOOKS)

    unregister()
    yield
    unregister()


def _no_cuda_torch() -> SimpleNamespace:
    """A fake ``torch`` (named as such) whose CUDA was never initialized, whatever the machine has."""
    return SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: False))


@pytest.mark.usefixtures("hooks_out")
def test_without_cuda_the_hooks_stay_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _no_cuda_torch())
    with InMemoryTelemetry():  # the plugin's telemetry_start looks, and finds no CUDA
        assert not gpu.enable_request_hooks()
        assert HOOKS_NAME not in _hook_plugins(), "requests pay no hook call"


@pytest.mark.usefixtures("hooks_out")
def test_cuda_in_use_at_telemetry_start_registers_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=FakeCudaModule()))
    with InMemoryTelemetry() as telemetry:  # registered by the plugin's own llamatelemetry_telemetry_start
        assert _hook_plugins().count(HOOKS_NAME) == 2
        assert gpu.enable_request_hooks(), "found registered"
        from llamatelemetry.inference.recording import start_generation

        with start_generation(REQUEST, provider="transformers", model="tiny-llama") as generation:
            generation.finish()
        attributes = _cuda_attributes(telemetry.span("chat tiny-llama"))
    assert attributes[names.CUDA_ALLOCATED_BEFORE] == 1000 and attributes[names.CUDA_ALLOCATED_DELTA] == 0


@pytest.mark.usefixtures("hooks_out")
def test_a_blocked_plugin_keeps_its_hooks_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry.testing import fresh_plugin_manager

    monkeypatch.setenv("LLAMATELEMETRY_DISABLE_PLUGINS", "transformers")
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=FakeCudaModule()))
    with fresh_plugin_manager(load_entry_points=True) as pm:
        assert not gpu.enable_request_hooks()
        assert not pm.is_registered(gpu.REQUEST_HOOKS)


@pytest.mark.usefixtures("hooks_out")
def test_the_backend_registers_them_at_load(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA put in use by the model load (stood in for by FakeCudaModule): the backend registers the hooks."""
    with InMemoryTelemetry():
        backend = TransformersBackend(tiny_llama_dir, device="cpu")
        monkeypatch.setattr(gpu, "cuda_in_use", lambda: FakeCudaModule())
        assert HOOKS_NAME not in _hook_plugins()
        with InferenceEngine(backend):
            assert _hook_plugins().count(HOOKS_NAME) == 2


@pytest.mark.usefixtures("hooks_out")
def test_an_instrumented_generate_registers_them(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from llamatelemetry_transformers.instrument import instrument_transformers, uninstrument_transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    with InMemoryTelemetry():
        instrument_transformers(model, tokenizer)
        try:
            monkeypatch.setattr(gpu, "cuda_in_use", lambda: FakeCudaModule())
            assert HOOKS_NAME not in _hook_plugins()
            model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=2, do_sample=False)
            assert _hook_plugins().count(HOOKS_NAME) == 2
        finally:
            uninstrument_transformers(model)


def test_without_cuda_in_use_it_adds_nothing(tiny_llama_dir: Path) -> None:
    import torch

    assert not torch.cuda.is_initialized()
    with InMemoryTelemetry() as telemetry, InferenceEngine(TransformersBackend(tiny_llama_dir, device="cpu")) as engine:
        engine.generate(REQUEST)
        span = telemetry.span("chat tiny-llama")
    assert _cuda_attributes(span) == {}
    assert not torch.cuda.is_initialized(), "the enricher never starts CUDA"


def test_without_torch_it_does_not_import_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch")
    span = _RecordingSpan()
    gpu.on_request_start(span)  # type: ignore[arg-type]
    gpu.on_request_end(span)  # type: ignore[arg-type]
    assert "torch" not in sys.modules and span.attributes == {}


class _RecordingSpan:
    """A span that records, with a fixed id: enough for the enricher's two calls."""

    def __init__(self, recording: bool = True) -> None:
        self.recording = recording
        self.attributes: dict[str, Any] = {}

    def is_recording(self) -> bool:
        return self.recording

    def get_span_context(self) -> Any:
        return SimpleNamespace(span_id=0xABC)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.attributes.update(attributes)


def test_figures_before_after_and_delta_with_a_fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudaModule()
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=fake))
    span = _RecordingSpan()
    gpu.on_request_start(span)  # type: ignore[arg-type]
    fake.allocated, fake.reserved, fake.peak = 1200, 8192, 5000
    gpu.on_request_end(span)  # type: ignore[arg-type]
    assert span.attributes == {
        names.CUDA_DEVICE: 1,
        names.CUDA_ALLOCATED_BEFORE: 1000, names.CUDA_RESERVED_BEFORE: 4096, names.CUDA_PEAK_BEFORE: 1500,
        names.CUDA_ALLOCATED_AFTER: 1200, names.CUDA_RESERVED_AFTER: 8192, names.CUDA_PEAK_AFTER: 5000,
        names.CUDA_ALLOCATED_DELTA: 200, names.CUDA_RESERVED_DELTA: 4096, names.CUDA_PEAK_DELTA: 4000,
    }
    assert fake.stats_calls == 2, "one statistics call per hook"
    assert gpu._started == {}, "nothing is kept once the request ended"


def test_a_span_that_does_not_record_costs_no_statistics_call(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudaModule()
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=fake))
    span = _RecordingSpan(recording=False)
    gpu.on_request_start(span)  # type: ignore[arg-type]
    gpu.on_request_end(span)  # type: ignore[arg-type]
    assert fake.stats_calls == 0 and span.attributes == {}


def test_cuda_started_during_the_request_gives_after_figures_only(monkeypatch: pytest.MonkeyPatch) -> None:
    span = _RecordingSpan()
    gpu.on_request_start(span)  # type: ignore[arg-type]  # real torch here: CUDA not in use, nothing recorded
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=FakeCudaModule()))
    gpu.on_request_end(span)  # type: ignore[arg-type]
    assert names.CUDA_ALLOCATED_AFTER in span.attributes
    assert names.CUDA_ALLOCATED_DELTA not in span.attributes and names.CUDA_ALLOCATED_BEFORE not in span.attributes


@pytest.mark.gpu
def test_real_cuda_figures_on_the_request_span(tiny_llama_dir: Path) -> None:
    import torch

    with InMemoryTelemetry() as telemetry, \
            InferenceEngine(TransformersBackend(tiny_llama_dir, device="cuda")) as engine:
        engine.generate(REQUEST)  # CUDA is in use from the model load on: the request gets before and after
        attributes = _cuda_attributes(telemetry.span("chat tiny-llama"))
    print(f"\nGPU {torch.cuda.get_device_name()}: {attributes}")
    assert attributes[names.CUDA_DEVICE] == torch.cuda.current_device()
    assert attributes[names.CUDA_ALLOCATED_BEFORE] > 0, "the weights are on the GPU"
    assert attributes[names.CUDA_PEAK_AFTER] >= attributes[names.CUDA_ALLOCATED_BEFORE]
    assert attributes[names.CUDA_RESERVED_AFTER] >= attributes[names.CUDA_ALLOCATED_AFTER]
    assert attributes[names.CUDA_PEAK_DELTA] == attributes[names.CUDA_PEAK_AFTER] - attributes[
        names.CUDA_ALLOCATED_BEFORE]
