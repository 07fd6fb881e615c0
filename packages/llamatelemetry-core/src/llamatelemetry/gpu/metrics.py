"""The ``hw.*`` GPU metrics (and our clock gauges) as observable instruments over a sampler's last readings."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from llamatelemetry.gpu.records import GPUReading
from llamatelemetry.semconv import gpu as gpu_names
from llamatelemetry.semconv import hw

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from llamatelemetry.gpu.sampler import GPUSampler

__all__ = ["create_gpu_instruments", "device_attributes"]

_GENERAL_TASK = {hw.HW_GPU_TASK: hw.HW_GPU_TASK_GENERAL}


def device_attributes(sampler: GPUSampler, device_id: int) -> dict[str, Any]:
    """The identifying attributes of one GPU's metric points (``hw.id`` is its UUID)."""
    device = sampler.device(device_id)
    return {hw.HW_ID: device.hw_id, hw.HW_TYPE: hw.HW_TYPE_GPU, hw.HW_NAME: device.name,
            hw.HW_VENDOR: hw.HW_VENDOR_NVIDIA, gpu_names.GPU_INDEX: device.index}


def _memory_utilization(r: GPUReading) -> float | None:
    return r.memory_used_bytes / r.memory_total_bytes if r.memory_total_bytes else None


def _mhz_to_hz(value: int | None) -> int | None:
    return value * 1_000_000 if value is not None else None


def create_gpu_instruments(meter: Meter, current_sampler: Callable[[], GPUSampler | None]) -> None:
    """Create the GPU instruments on ``meter``; each collection reads ``current_sampler()``'s last values.

    The sampler is looked up at every collection, so instruments created once keep working
    across ``init()``/``shutdown()`` cycles on an application's meter provider (and report
    nothing while no sampler runs).
    """
    from opentelemetry.metrics import Observation

    def callback(value: Callable[[GPUReading], float | int | None],
                 extra: dict[str, Any] | None = None) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            sampler = current_sampler()
            if sampler is None:
                return []
            points: list[Observation] = []
            for device_id in sampler.device_ids:
                reading = sampler.latest(device_id)
                figure = value(reading) if reading is not None else None
                if figure is not None:
                    attributes = device_attributes(sampler, device_id)
                    if extra:
                        attributes.update(extra)
                    points.append(Observation(figure, attributes))
            return points

        return observe

    meter.create_observable_gauge(
        hw.HW_GPU_UTILIZATION, [callback(lambda r: r.utilization, _GENERAL_TASK)], unit="1",
        description="Fraction of time the GPU was busy (NVML's last sample period).")
    meter.create_observable_up_down_counter(
        hw.HW_GPU_MEMORY_USAGE, [callback(lambda r: r.memory_used_bytes)], unit="By",
        description="GPU memory in use.")
    meter.create_observable_up_down_counter(
        hw.HW_GPU_MEMORY_LIMIT, [callback(lambda r: r.memory_total_bytes)], unit="By",
        description="Total GPU memory.")
    meter.create_observable_gauge(
        hw.HW_GPU_MEMORY_UTILIZATION, [callback(_memory_utilization)], unit="1",
        description="Fraction of GPU memory in use.")
    meter.create_observable_gauge(
        hw.HW_POWER, [callback(lambda r: r.power_w)], unit="W", description="GPU power draw.")
    meter.create_observable_counter(
        hw.HW_ENERGY, [callback(lambda r: r.energy_j)], unit="J",
        description="GPU energy consumed (NVML's counter, or the integral of power where there is none).")
    meter.create_observable_gauge(
        hw.HW_TEMPERATURE, [callback(lambda r: r.temperature_c)], unit="Cel", description="GPU temperature.")
    meter.create_observable_gauge(
        gpu_names.GPU_CLOCK_SM, [callback(lambda r: _mhz_to_hz(r.sm_clock_mhz))], unit="Hz",
        description="GPU streaming-multiprocessor clock.")
    meter.create_observable_gauge(
        gpu_names.GPU_CLOCK_MEMORY, [callback(lambda r: _mhz_to_hz(r.memory_clock_mhz))], unit="Hz",
        description="GPU memory clock.")
