"""GPUSpanEnricher over a FAKE NVML: memory and energy arithmetic, no NVML call per span, split models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpu_helpers import T4_UUID, T4_UUID_2
from opentelemetry.trace import INVALID_SPAN

import llamatelemetry
from llamatelemetry.errors import ValidationError
from llamatelemetry.gpu import GPUDevice, GPUSampler, GPUSpanEnricher, NoGPUError
from llamatelemetry.gpu.records import MIB
from llamatelemetry.semconv import gpu as names
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager
from llamatelemetry.testing.fake_nvml import FakeNVML


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    with fresh_plugin_manager(), InMemoryTelemetry() as t:
        yield t


def _attributes(t: InMemoryTelemetry, name: str = "generate") -> dict[str, Any]:
    return dict(t.span(name).attributes or {})


def _tick(fake: FakeNVML, sampler: GPUSampler, seconds: float) -> None:
    """What the sampler's thread does every interval: the GPU moves on, the sampler reads it."""
    fake.advance(1, seconds=seconds)
    sampler.sample()


def test_memory_and_energy_of_a_generation_span(fake_t4: FakeNVML, telemetry: InMemoryTelemetry) -> None:
    clock = fake_t4.clock
    # A thread that never wakes during the test: the test drives every sample itself.
    with GPUSampler.open(interval_s=3600) as sampler:
        _tick(fake_t4, sampler, 0.1)  # the model is loaded: 1026 MiB, counter 5002 J, 27 W
        enricher = GPUSpanEnricher(0, sampler=sampler)
        clock.advance(0.05)  # the span starts between samples: 5002 + 27 W * 0.05 s = 5003.35 J
        with llamatelemetry.span("generate") as span, enricher.enrich(span):
            for seconds in (0.05, 0.1, 0.1):  # 1028, 1030 (the peak), 1028 MiB; 70 W; 7 J per step
                _tick(fake_t4, sampler, seconds)
            clock.advance(0.02)  # the span ends 0.02 s after the last sample: 5023 + 70 W * 0.02 s = 5024.4 J
            span.set_attribute("gen_ai.usage.output_tokens", 10)
    attributes = _attributes(telemetry)
    assert attributes[names.GPU_DEVICE_ID] == 0 and names.GPU_DEVICE_IDS not in attributes
    assert attributes[names.GPU_MEMORY_BEFORE] == 1026 * MIB
    assert attributes[names.GPU_MEMORY_AFTER] == 1028 * MIB
    assert attributes[names.GPU_MEMORY_DELTA] == 2 * MIB
    assert attributes[names.GPU_MEMORY_PEAK] == 1030 * MIB
    assert attributes[names.GPU_ENERGY] == pytest.approx(5024.4 - 5003.35)
    assert attributes[names.GPU_ENERGY_PER_OUTPUT_TOKEN] == pytest.approx((5024.4 - 5003.35) / 10)
    assert not any(key.startswith(names.GPU_DEVICE_PREFIX) for key in attributes), "one device: no copies"


def test_a_span_inside_one_sample_interval_gets_power_times_duration(fake_t4: FakeNVML,
                                                                     telemetry: InMemoryTelemetry) -> None:
    with GPUSampler.open(interval_s=3600) as sampler:
        for _ in range(2):
            _tick(fake_t4, sampler, 0.1)  # generating at 70 W
        enricher = GPUSpanEnricher(0, sampler=sampler)
        with llamatelemetry.span("generate") as span, enricher.enrich(span):
            fake_t4.clock.advance(0.03)
    attributes = _attributes(telemetry)
    assert attributes[names.GPU_ENERGY] == pytest.approx(70.0 * 0.03)
    assert attributes[names.GPU_MEMORY_DELTA] == 0
    assert names.GPU_ENERGY_PER_OUTPUT_TOKEN not in attributes, "not a generation span: no tokens"


def test_enriching_a_span_calls_no_nvml_function(fake_t4: FakeNVML, telemetry: InMemoryTelemetry) -> None:
    with GPUSampler.open(interval_s=3600) as sampler:
        enricher = GPUSpanEnricher(0, sampler=sampler)
        with llamatelemetry.span("generate") as span:
            calls = sum(fake_t4.calls.values())
            window = enricher.start(span)
            assert window is not None
            enricher.finish(span, window, output_tokens=3)
            assert sum(fake_t4.calls.values()) == calls, "span edges read the sampler, never NVML"
    assert names.GPU_ENERGY in _attributes(telemetry)


def test_a_span_that_is_not_recorded_costs_nothing(fake_t4: FakeNVML) -> None:
    with GPUSampler.open(interval_s=3600) as sampler:
        enricher = GPUSpanEnricher(0, sampler=sampler)
        assert enricher.start(INVALID_SPAN) is None
        with enricher.enrich(INVALID_SPAN):
            pass


def test_a_split_model_gets_sums_and_per_device_copies(fake_t4x2: FakeNVML, telemetry: InMemoryTelemetry) -> None:
    fake_t4x2.devices[1].step = 1  # the second GPU runs one step ahead: its peak comes earlier
    with GPUSampler.open(interval_s=3600) as sampler:
        enricher = GPUSpanEnricher([0, 1], sampler=sampler)
        with llamatelemetry.span("generate") as span, enricher.enrich(span):
            for _ in range(4):
                _tick(fake_t4x2, sampler, 0.1)
    attributes = _attributes(telemetry)
    mib = [2, 1026, 1028, 1030, 1028, 1026]  # each T4's memory script, in MiB
    first, second = mib[0:5], mib[1:6]  # the five readings each GPU gave: at the start and four samples
    # The sum peaks mid-span (2058 MiB) above both its start and its end: the peak of the sum is not
    # the sum of the peaks (2060), nor the sum at the end (2054).
    assert attributes[names.GPU_DEVICE_IDS] == (0, 1) and names.GPU_DEVICE_ID not in attributes
    assert attributes[names.GPU_MEMORY_BEFORE] == (first[0] + second[0]) * MIB
    assert attributes[names.GPU_MEMORY_AFTER] == (first[-1] + second[-1]) * MIB
    assert attributes[names.GPU_MEMORY_PEAK] == max(a + b for a, b in zip(first, second, strict=True)) * MIB
    for index, script in ((0, first), (1, second)):
        assert attributes[names.device_attribute(index, "memory.before")] == script[0] * MIB
        assert attributes[names.device_attribute(index, "memory.after")] == script[-1] * MIB
        assert attributes[names.device_attribute(index, "memory.delta")] == (script[-1] - script[0]) * MIB
        assert attributes[names.device_attribute(index, "memory.peak")] == max(script) * MIB
    assert attributes[names.GPU_MEMORY_PEAK] == 2058 * MIB
    # Counters: GPU 0 goes 5000 -> 5002 -> 5009 -> 5016 -> 5023 J; GPU 1 5002 -> 5009 -> 5016 -> 5023 -> 5025.7 J.
    # Both edges fall on samples (the clock stood still after the last tick), so nothing is extrapolated.
    assert attributes[names.device_attribute(0, "energy")] == pytest.approx(23.0)
    assert attributes[names.device_attribute(1, "energy")] == pytest.approx(23.7)
    assert attributes[names.GPU_ENERGY] == pytest.approx(46.7)


def test_for_tensor_split_maps_shares_to_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [GPUDevice(0, "Tesla T4", T4_UUID, 1), GPUDevice(1, "Tesla T4", T4_UUID_2, 1)]
    assert GPUSpanEnricher.for_tensor_split("0.5,0.5", devices=devices).device_ids == (0, 1)
    assert GPUSpanEnricher.for_tensor_split("1.0,0.0", devices=devices).device_ids == (0,)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert GPUSpanEnricher.for_tensor_split([1.0, 0.0], devices=devices).device_ids == (1,)
    assert GPUSpanEnricher.for_tensor_split("0.3,0.7", devices=devices).device_ids == (1, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(NoGPUError, match="names no GPU this process can see"):
        GPUSpanEnricher.for_tensor_split("0,1", devices=devices)


@pytest.mark.parametrize("device_id", [-1, [], [0, 0], [0, "1"], True])
def test_device_ids_are_validated(device_id: Any) -> None:
    with pytest.raises(ValidationError, match=r"GPUSpanEnricher\.device_id"):
        GPUSpanEnricher(device_id)


def test_without_a_running_sampler_it_samples_at_the_span_edges(fake_t4: FakeNVML,
                                                               telemetry: InMemoryTelemetry) -> None:
    enricher = GPUSpanEnricher(0)  # no init(enable_gpu=True), no sampler: it opens NVML itself
    with llamatelemetry.span("generate") as span, enricher.enrich(span):
        fake_t4.advance(2, seconds=0.1)  # idle (5000 J, 10 W) -> generating (5009 J)
    assert fake_t4.initialized == 1, "the enricher keeps NVML open between spans"
    enricher.close()
    attributes = _attributes(telemetry)
    assert attributes[names.GPU_MEMORY_BEFORE] == 2 * MIB and attributes[names.GPU_MEMORY_AFTER] == 1028 * MIB
    assert attributes[names.GPU_MEMORY_PEAK] == 1028 * MIB
    assert attributes[names.GPU_ENERGY] == pytest.approx(9.0)


def test_an_error_inside_the_block_still_records_and_propagates(fake_t4: FakeNVML,
                                                                telemetry: InMemoryTelemetry) -> None:
    with GPUSampler.open(interval_s=3600) as sampler:
        enricher = GPUSpanEnricher(0, sampler=sampler)
        with pytest.raises(KeyError), llamatelemetry.span("generate") as span, enricher.enrich(span):
            raise KeyError("the model failed")
    assert names.GPU_MEMORY_BEFORE in _attributes(telemetry)


def test_spans_that_never_end_are_forgotten_past_a_bound(fake_t4: FakeNVML) -> None:
    with GPUSampler.open(interval_s=3600) as sampler, fresh_plugin_manager(), InMemoryTelemetry() as telemetry:
        enricher = GPUSpanEnricher(0, sampler=sampler)
        enricher.MAX_OPEN_SPANS = 3
        tracer = telemetry.telemetry.tracer if telemetry.telemetry else None
        assert tracer is not None
        spans = [tracer.start_span(f"leaked {i}") for i in range(5)]
        for span in spans:  # a client that starts requests and never ends them
            enricher.llamatelemetry_request_start(span)
        assert len(enricher._open) == 3 and len(sampler._observers) == 3
        enricher.llamatelemetry_request_end(spans[0])  # forgotten: nothing to add
        enricher.llamatelemetry_request_end(spans[4])
        assert len(enricher._open) == 2 and len(sampler._observers) == 2
        for span in spans:
            span.end()
    assert names.GPU_MEMORY_BEFORE not in dict(spans[0].attributes or {})
    assert names.GPU_MEMORY_BEFORE in dict(spans[4].attributes or {})
