"""init(enable_gpu=True) over a FAKE NVML: every generation span gets GPU data, hw.* metrics, clean shutdown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gpu_helpers import T4_UUID, T4_UUID_2, EchoBackend
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NoOpTracerProvider

from llamatelemetry.config import resolve_settings
from llamatelemetry.gpu.plugin import ENRICHER_NAME, PLUGIN_NAME, GPUTelemetryPlugin, running_sampler
from llamatelemetry.gpu.records import MIB
from llamatelemetry.inference import InferenceEngine, InferenceRequest
from llamatelemetry.plugins import PluginManager
from llamatelemetry.semconv import gpu as names
from llamatelemetry.semconv import hw
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager
from llamatelemetry.testing.fake_nvml import FakeNVML

REQUEST = InferenceRequest(messages=[{"role": "user", "content": "one two three four"}], max_tokens=8)


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llamatelemetry-gpu-sampler"]


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginManager]:
    # The sampler's own thread stays asleep: the backend below takes the samples, so figures are exact.
    monkeypatch.setenv("LLAMATELEMETRY_GPU_SAMPLE_INTERVAL", "3600")
    with fresh_plugin_manager() as pm:
        yield pm


def _generating(fake: FakeNVML) -> EchoBackend:
    """A backend during whose generate() the GPUs run three sample intervals at 70 W."""

    def run() -> None:
        sampler = running_sampler()
        assert sampler is not None
        for _ in range(3):
            fake.advance(1, seconds=0.1)
            sampler.sample()

    return EchoBackend(on_generate=run)


def test_every_generation_span_gets_gpu_data(fake_t4: FakeNVML, manager: PluginManager) -> None:
    fake_t4.advance(1)  # the model is loaded
    with InMemoryTelemetry(enable_gpu=True) as telemetry, InferenceEngine(_generating(fake_t4)) as engine:
        assert manager.has_impls("llamatelemetry_request_start") and len(_sampler_threads()) == 1
        engine.generate(REQUEST)
        attributes = dict(telemetry.span("chat echo-model").attributes or {})
        resource = dict(telemetry.span("chat echo-model").resource.attributes)
    assert attributes[names.GPU_DEVICE_ID] == 0 and names.GPU_DEVICE_IDS not in attributes
    assert attributes[names.GPU_MEMORY_BEFORE] == 1026 * MIB and attributes[names.GPU_MEMORY_PEAK] == 1030 * MIB
    assert attributes[names.GPU_MEMORY_DELTA] == 2 * MIB
    assert attributes[names.GPU_ENERGY] == pytest.approx(21.0)  # three steps of 7 J
    assert attributes[names.GPU_ENERGY_PER_OUTPUT_TOKEN] == pytest.approx(21.0 / 4)  # four words echoed
    assert resource[names.HOST_NAME], "GPU metrics need the host on the resource"
    # shutdown(): the thread is gone, the hooks are unregistered, NVML is released (the fixture checks).
    assert not _sampler_threads() and running_sampler() is None
    assert not manager.has_impls("llamatelemetry_request_end")
    assert manager.pluggy_manager.get_plugin(ENRICHER_NAME) is None


def _points(telemetry: InMemoryTelemetry, name: str) -> list[tuple[float, dict[str, Any]]]:
    return sorted(((p.value, p.attributes) for p in telemetry.metric_points(name)),
                  key=lambda point: point[1].get(names.GPU_INDEX, -1))


def test_hw_metrics_carry_the_semantic_convention_attributes(fake_t4x2: FakeNVML, manager: PluginManager) -> None:
    fake_t4x2.advance(2)  # generating
    with InMemoryTelemetry(enable_gpu=True) as telemetry:
        power = _points(telemetry, hw.HW_POWER)
        assert [value for value, _ in power] == [70.0, 70.0]
        assert [attributes for _, attributes in power] == [
            {hw.HW_ID: uuid, hw.HW_TYPE: "gpu", hw.HW_NAME: "Tesla T4", hw.HW_VENDOR: "NVIDIA", names.GPU_INDEX: i}
            for i, uuid in enumerate((T4_UUID, T4_UUID_2))]
        expected = {
            hw.HW_GPU_UTILIZATION: 0.97, hw.HW_GPU_MEMORY_USAGE: 1028 * MIB, hw.HW_GPU_MEMORY_LIMIT: 15360 * MIB,
            hw.HW_GPU_MEMORY_UTILIZATION: 1028 / 15360, hw.HW_ENERGY: 5009.0, hw.HW_TEMPERATURE: 55.0,
            names.GPU_CLOCK_SM: 1590e6, names.GPU_CLOCK_MEMORY: 5001e6,
        }
        for name, value in expected.items():
            points = _points(telemetry, name)
            assert [v for v, _ in points] == pytest.approx([value, value]), name
        assert all(a[hw.HW_GPU_TASK] == "general" for _, a in _points(telemetry, hw.HW_GPU_UTILIZATION))
        units = {p.name: p.unit for p in telemetry.metric_points() if p.name.startswith(("hw.", "llamatelemetry.gpu"))}
    assert units == {hw.HW_POWER: "W", hw.HW_ENERGY: "J", hw.HW_TEMPERATURE: "Cel", hw.HW_GPU_UTILIZATION: "1",
                     hw.HW_GPU_MEMORY_USAGE: "By", hw.HW_GPU_MEMORY_LIMIT: "By", hw.HW_GPU_MEMORY_UTILIZATION: "1",
                     names.GPU_CLOCK_SM: "Hz", names.GPU_CLOCK_MEMORY: "Hz"}


@pytest.mark.parametrize(("variable", "value", "watched"), [
    ("LLAMATELEMETRY_GPU_DEVICES", "1", (1,)),
    ("CUDA_VISIBLE_DEVICES", "1", (1,)),
    ("CUDA_VISIBLE_DEVICES", T4_UUID_2[:12], (1,)),
    (None, None, (0, 1)),
])
def test_the_watched_gpus(fake_t4x2: FakeNVML, manager: PluginManager, monkeypatch: pytest.MonkeyPatch,
                          variable: str | None, value: str | None, watched: tuple[int, ...]) -> None:
    if variable is not None and value is not None:
        monkeypatch.setenv(variable, value)
    with InMemoryTelemetry(enable_gpu=True) as telemetry, InferenceEngine(EchoBackend()) as engine:
        sampler = running_sampler()
        assert sampler is not None and sampler.device_ids == watched
        engine.generate(REQUEST)
        attributes = dict(telemetry.span("chat echo-model").attributes or {})
        assert {p.attributes[names.GPU_INDEX] for p in telemetry.metric_points(hw.HW_POWER)} == set(watched)
    if len(watched) == 1:
        assert attributes[names.GPU_DEVICE_ID] == watched[0] and names.GPU_DEVICE_IDS not in attributes
    else:
        assert attributes[names.GPU_DEVICE_IDS] == watched and names.GPU_DEVICE_ID not in attributes
    assert (names.device_attribute(1, "energy") in attributes) == (len(watched) > 1)


def test_cuda_hiding_every_gpu_warns_and_goes_on(fake_t4x2: FakeNVML, manager: PluginManager,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"), InMemoryTelemetry(enable_gpu=True):
        assert running_sampler() is None
    assert any("hides every GPU" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("variable", "value"), [("LLAMATELEMETRY_GPU_SAMPLE_INTERVAL", "fast"),
                                                 ("LLAMATELEMETRY_GPU_DEVICES", "first"),
                                                 ("LLAMATELEMETRY_GPU_DEVICES", ",")])
def test_a_bad_setting_is_reported_and_telemetry_goes_on(fake_t4: FakeNVML, manager: PluginManager,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture, variable: str,
                                                         value: str) -> None:
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.WARNING), InMemoryTelemetry(enable_gpu=True) as telemetry, \
            InferenceEngine(EchoBackend()) as engine:
        engine.generate(REQUEST)
        assert running_sampler() is None
        assert telemetry.span("chat echo-model")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{variable}={value!r}" in w and "Continuing without GPU telemetry" in w for w in warnings), warnings

def test_instruments_on_an_application_provider_read_the_current_sampler(
        fake_t4: FakeNVML, manager: PluginManager, caplog: pytest.LogCaptureFixture) -> None:
    # An application's MeterProvider outlives init()/shutdown() cycles: after a restart there must be
    # one point per GPU (no duplicate instruments), read from the new sampler, and no conflict warning.
    manager.ensure_loaded()
    plugin = manager.pluggy_manager.get_plugin(PLUGIN_NAME)
    assert isinstance(plugin, GPUTelemetryPlugin)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    settings = resolve_settings(service_name="app", enable_gpu=True)
    with caplog.at_level(logging.WARNING):
        for step in range(2):
            plugin.llamatelemetry_telemetry_start(settings, NoOpTracerProvider(), provider)
            fake_t4.advance(2 * step)
            sampler = running_sampler()
            assert sampler is not None
            sampler.sample()
            data = reader.get_metrics_data()
            assert data is not None
            usage = [point.value for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                     if m.name == hw.HW_GPU_MEMORY_USAGE for point in m.data.data_points]
            assert usage == [(2 if step == 0 else 1028) * MIB]
            plugin.llamatelemetry_telemetry_shutdown(settings)
    provider.shutdown()
    assert not [r for r in caplog.records if "created already" in r.getMessage()]
