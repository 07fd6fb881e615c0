"""GPUSampler over a FAKE NVML: last readings, energy (counter or power integral), its thread and failures."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from gpu_helpers import t4

from llamatelemetry.errors import ValidationError
from llamatelemetry.gpu import GPUSampler, NoGPUError, open_source
from llamatelemetry.gpu.records import MIB, GPUReading
from llamatelemetry.gpu.sampler import energy_at
from llamatelemetry.testing.fake_nvml import FakeNVML


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_sample_keeps_each_devices_last_reading_in_our_units(fake_t4x2: FakeNVML) -> None:
    with GPUSampler.open(interval_s=3600) as sampler:
        assert sampler.device_ids == (0, 1)
        fake_t4x2.advance(2, seconds=0.2)
        sampler.sample()
        reading = sampler.latest(1)
        assert reading == GPUReading(index=1, time=fake_t4x2.clock.now, memory_used_bytes=1028 * MIB,
                                     memory_total_bytes=15360 * MIB, utilization=0.97, power_w=70.0,
                                     energy_j=5009.0, temperature_c=55.0, sm_clock_mhz=1590,
                                     memory_clock_mhz=5001)
        assert sampler.latest(7) is None


def test_only_the_chosen_devices_are_read(fake_t4x2: FakeNVML) -> None:
    with GPUSampler.open([1], interval_s=3600) as sampler:
        assert sampler.latest(0) is None and sampler.latest(1) is not None
        assert [d.index for d in sampler.devices] == [1]
    with pytest.raises(NoGPUError, match="There is no GPU 4"):
        GPUSampler.open([0, 4])


def test_without_an_energy_counter_power_is_integrated(install_fake: Callable[[FakeNVML], FakeNVML]) -> None:
    fake = install_fake(FakeNVML([t4(energy_counter=False)]))
    with GPUSampler.open(interval_s=3600) as sampler:
        energies = [sampler.latest(0).energy_j]  # type: ignore[union-attr]
        for _ in range(3):  # idle 10 W -> loaded 27 W -> generating 70 W -> 70 W, 0.1 s apart
            fake.advance(1, seconds=0.1)
            sampler.sample()
            energies.append(sampler.latest(0).energy_j)  # type: ignore[union-attr]
    # The trapezoid rule: (10+27)/2*0.1 = 1.85 J, then (27+70)/2*0.1 = 4.85 J, then 70*0.1 = 7 J.
    assert energies == pytest.approx([0.0, 1.85, 6.7, 13.7])


def test_energy_at_extrapolates_with_the_last_power() -> None:
    reading = GPUReading(index=0, time=10.0, memory_used_bytes=0, memory_total_bytes=1, power_w=70.0, energy_j=100.0)
    assert energy_at(reading, 10.5) == pytest.approx(135.0)
    assert energy_at(reading, 9.0) == 100.0, "never extrapolates backwards"
    assert energy_at(GPUReading(0, 10.0, 0, 1, energy_j=100.0), 11.0) == 100.0, "no power: the counter as is"
    assert energy_at(GPUReading(0, 10.0, 0, 1, power_w=70.0), 11.0) is None


def test_one_daemon_thread_samples_until_stopped(fake_t4: FakeNVML) -> None:
    sampler = GPUSampler.open(interval_s=0.01).start()
    assert sampler.start() is sampler, "starting twice keeps one thread"
    threads = [t for t in threading.enumerate() if t.name == "llamatelemetry-gpu-sampler"]
    assert len(threads) == 1 and threads[0].daemon
    reads = fake_t4.calls["nvmlDeviceGetMemoryInfo"]
    assert _wait_for(lambda: fake_t4.calls["nvmlDeviceGetMemoryInfo"] >= reads + 3), "the thread samples"
    sampler.stop()
    assert not threads[0].is_alive() and not sampler.running
    stopped_at = fake_t4.calls["nvmlDeviceGetMemoryInfo"]
    time.sleep(0.05)
    assert fake_t4.calls["nvmlDeviceGetMemoryInfo"] == stopped_at, "no sampling after stop()"
    assert fake_t4.initialized == 0, "stop() releases NVML"
    sampler.stop()  # harmless twice
    with pytest.raises(RuntimeError, match="open a new one"):
        sampler.start()


def test_a_failing_read_is_logged_once_and_sampling_goes_on(fake_t4: FakeNVML,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="llamatelemetry.gpu"), GPUSampler.open(interval_s=0.01) as sampler:
        before = sampler.latest(0)
        fake_t4.read_error = FakeNVML.NVMLError_GpuIsLost
        assert _wait_for(lambda: sum("GPU sampling failed" in r.getMessage() for r in caplog.records) >= 3)
        assert sampler.latest(0) == before, "the last good reading stays"
        fake_t4.read_error = None
        fake_t4.advance(1, seconds=0.1)
        assert _wait_for(lambda: sampler.latest(0) != before), "sampling resumes"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPU is lost" in warnings[0].getMessage()


@pytest.mark.parametrize("interval", [0, -1, float("nan"), True, "0.1"])
def test_interval_must_be_positive_seconds(fake_t4: FakeNVML, interval: object) -> None:
    with open_source() as source, pytest.raises(ValidationError, match="interval_s"):
        GPUSampler(source, interval_s=interval, owns_source=False)  # type: ignore[arg-type]
