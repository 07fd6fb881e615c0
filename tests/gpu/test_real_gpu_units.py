"""Real-GPU checks that catch unit mistakes (mW for W, mJ for J, MiB for bytes); skipped where no GPU is found.

Each bound is wide (a factor of two at most) but a unit slip is a factor of 1,000 or 1,048,576.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from llamatelemetry.gpu import GPUSampler, GPUSnapshot, list_devices
from llamatelemetry.gpu.records import GPUReading

pytestmark = pytest.mark.gpu


def _cuda_torch() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


class _Recorder:
    """Keeps every reading of device 0 the sampler takes."""

    def __init__(self) -> None:
        self.readings: list[GPUReading] = []

    def observe(self, latest: dict[int, GPUReading]) -> None:
        reading = latest.get(0)
        if reading is not None and (not self.readings or reading.time > self.readings[-1].time):
            self.readings.append(reading)


def _busy(torch: Any, seconds: float) -> None:
    """Keep the GPU computing for about ``seconds`` (large matmuls)."""
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.float16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(8):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def test_power_is_in_watts_between_zero_and_a_plausible_limit() -> None:
    snapshot = GPUSnapshot.capture(list_devices()[0].index)
    if snapshot.power_w is None or snapshot.power_limit_w is None:
        pytest.skip("this GPU reports no power or no power limit")
    assert 0 < snapshot.power_limit_w <= 1000, snapshot.power_limit_w  # the largest cards today: 700-1,000 W
    assert 0 < snapshot.power_w <= snapshot.power_limit_w * 1.05, (snapshot.power_w, snapshot.power_limit_w)


def test_energy_over_a_span_matches_integrated_power() -> None:
    """The energy counter's joules over a busy stretch are within 0.5-2x of the sampled watts integrated."""
    torch = _cuda_torch()
    if GPUSnapshot.capture(0).energy_j is None:
        pytest.skip("this GPU has no energy counter (before Volta): energy is the power integral itself")
    recorder = _Recorder()
    with GPUSampler.open([0], interval_s=0.05) as sampler:
        sampler.add_observer(recorder)
        _busy(torch, 3.0)
    readings = [r for r in recorder.readings if r.power_w is not None and r.energy_j is not None]
    assert len(readings) >= 20, len(readings)
    counted = (readings[-1].energy_j or 0.0) - (readings[0].energy_j or 0.0)
    integrated = sum((b.time - a.time) * ((a.power_w or 0.0) + (b.power_w or 0.0)) / 2
                     for a, b in itertools.pairwise(readings))
    assert integrated > 0 and 0.5 <= counted / integrated <= 2.0, (counted, integrated)


def test_memory_peak_holds_the_weights_and_fits_the_card() -> None:
    """With 1 GiB of weights on the GPU, the sampled peak is at least that and at most the card's total."""
    torch = _cuda_torch()
    recorder = _Recorder()
    with GPUSampler.open([0], interval_s=0.05) as sampler:
        sampler.add_observer(recorder)
        model = torch.nn.Sequential(*[torch.nn.Linear(8192, 8192, bias=False) for _ in range(4)]).to(
            "cuda:0", dtype=torch.float32)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        torch.cuda.synchronize()
        sampler.sample()
        time.sleep(0.2)
        peak = max(r.memory_used_bytes for r in recorder.readings)
        total = recorder.readings[-1].memory_total_bytes
        del model
        torch.cuda.empty_cache()
    assert weights == 4 * 8192 * 8192 * 4
    assert weights <= peak <= total, (weights, peak, total)
    assert total == list_devices()[0].memory_total_bytes
