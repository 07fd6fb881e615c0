"""The built-in GPU plugin: with ``init(enable_gpu=True)`` it starts the sampler, creates the ``hw.*``
instruments and registers a ``GPUSpanEnricher`` for every generation span; ``shutdown()`` undoes it.

It also adds the rank and host of a torch.distributed job to the resource. Settings, read at
``init()``: ``LLAMATELEMETRY_GPU_DEVICES`` (NVML indices to watch, e.g. ``0,1``; default: the GPUs
CUDA sees) and ``LLAMATELEMETRY_GPU_SAMPLE_INTERVAL`` (seconds, default 0.1).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llamatelemetry.errors import ConfigurationError
from llamatelemetry.gpu.enricher import GPUSpanEnricher
from llamatelemetry.gpu.sampler import DEFAULT_INTERVAL_S, GPUSampler
from llamatelemetry.gpu.sources import NoGPUError, open_source, visible_device_ids
from llamatelemetry.plugins.hookspecs import hookimpl
from llamatelemetry.semconv import gpu as names

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from llamatelemetry.config import TelemetrySettings

__all__ = ["GPUTelemetryPlugin", "running_sampler", "PLUGIN_NAME", "ENRICHER_NAME"]

log = logging.getLogger("llamatelemetry.gpu")

PLUGIN_NAME = "llamatelemetry.builtin.gpu"
ENRICHER_NAME = "llamatelemetry.builtin.gpu.enricher"
ENV_GPU_DEVICES = "LLAMATELEMETRY_GPU_DEVICES"
ENV_GPU_SAMPLE_INTERVAL = "LLAMATELEMETRY_GPU_SAMPLE_INTERVAL"
METER_NAME = "llamatelemetry.gpu"


def running_sampler() -> GPUSampler | None:
    """The sampler ``init(enable_gpu=True)`` started, or ``None``."""
    from llamatelemetry.plugins import get_plugin_manager

    plugin = get_plugin_manager().pluggy_manager.get_plugin(PLUGIN_NAME)
    return plugin.sampler if isinstance(plugin, GPUTelemetryPlugin) else None


def _device_ids(env: Mapping[str, str]) -> list[int] | None:
    value = env.get(ENV_GPU_DEVICES, "").strip()
    if not value:
        return None
    try:
        chosen = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        chosen = []
    if not chosen:
        raise ConfigurationError(f"{ENV_GPU_DEVICES}={value!r}: give NVML GPU indices separated by commas, "
                                 "e.g. 0,1.")
    return chosen


def _interval(env: Mapping[str, str]) -> float:
    value = env.get(ENV_GPU_SAMPLE_INTERVAL, "").strip()
    if not value:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigurationError(f"{ENV_GPU_SAMPLE_INTERVAL}={value!r}: give the seconds between GPU samples, "
                                 "a number > 0 (e.g. 0.1).")
    return seconds


class GPUTelemetryPlugin:
    """Starts and stops GPU telemetry with ``init()``/``shutdown()`` (registered as a built-in plugin)."""

    def __init__(self) -> None:
        self.sampler: GPUSampler | None = None
        self.enricher: GPUSpanEnricher | None = None
        self._manager: Any = None
        self._warned_no_gpu = False

    @hookimpl
    def llamatelemetry_resource_attributes(self, settings: TelemetrySettings) -> dict[str, Any] | None:
        """Rank and host of a torch.distributed job; the host alone when GPU telemetry is on."""
        from llamatelemetry.distributed import ClusterTopology, in_distributed_job

        if in_distributed_job():
            try:
                return ClusterTopology.detect(devices=()).resource_attributes()
            except ConfigurationError as exc:
                log.warning("No rank on the resource: %s", exc)
        if settings.enable_gpu:
            return {names.HOST_NAME: socket.gethostname()}
        return None

    @hookimpl
    def llamatelemetry_telemetry_start(self, settings: TelemetrySettings, tracer_provider: TracerProvider,
                                       meter_provider: MeterProvider) -> None:
        """With ``enable_gpu``: start sampling, create the instruments, enrich generation spans."""
        if not settings.enable_gpu or not settings.enabled:
            return
        self._stop()
        try:
            sampler = self._open_sampler()
        except ConfigurationError as exc:
            log.warning("init(enable_gpu=True): %s Continuing without GPU telemetry.", exc)
            return
        except NoGPUError as exc:
            if not self._warned_no_gpu:  # a CPU machine is told once per process, not at every init()
                self._warned_no_gpu = True
                log.warning("init(enable_gpu=True): %s Continuing without GPU telemetry.", exc)
            return
        self.sampler = sampler
        self._instrument(meter_provider)
        from llamatelemetry.plugins import get_plugin_manager

        self._manager = get_plugin_manager()
        self.enricher = GPUSpanEnricher(sampler.device_ids, sampler=sampler)
        self._manager.register(self.enricher, name=ENRICHER_NAME)
        log.info("GPU telemetry on: %s", sampler)

    @staticmethod
    def _open_sampler() -> GPUSampler:
        """A started sampler on the watched GPUs: ``LLAMATELEMETRY_GPU_DEVICES``, else those CUDA sees."""
        interval = _interval(os.environ)
        chosen = _device_ids(os.environ)
        source = open_source()
        try:
            if chosen is None and "CUDA_VISIBLE_DEVICES" in os.environ:
                # NVML lists every GPU; the ones this process's CUDA cannot see are not its GPUs.
                chosen = visible_device_ids(source.devices())
                if not chosen:
                    raise NoGPUError(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU "
                                     f"from this process (set {ENV_GPU_DEVICES} to watch some anyway).")
            sampler = GPUSampler(source, chosen, interval_s=interval)
            return sampler.start()
        except BaseException:
            source.close()
            raise

    @staticmethod
    def _instrument(meter_provider: MeterProvider) -> None:
        # On an application's provider the instruments outlive shutdown(); creating them again after a
        # restart returns the existing ones, whose callbacks look the current sampler up at each collection.
        from llamatelemetry._version import __version__
        from llamatelemetry.gpu.metrics import create_gpu_instruments

        create_gpu_instruments(meter_provider.get_meter(METER_NAME, __version__), running_sampler)

    @hookimpl
    def llamatelemetry_telemetry_shutdown(self, settings: TelemetrySettings) -> None:
        """Unregister the enricher and stop the sampler."""
        self._stop()

    def _stop(self) -> None:
        enricher, self.enricher = self.enricher, None
        sampler, self.sampler = self.sampler, None
        if enricher is not None and self._manager is not None:
            self._manager.unregister(enricher)
        if sampler is not None:
            sampler.stop()
