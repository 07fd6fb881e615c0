"""Entry point of the NCCL plugin: resource attributes of a rank, the ``torch_distributed`` instrumentor, and
``init(enable_nccl=True)``, which instruments once a process group exists."""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from llamatelemetry.plugins import InstrumentorSpec, hookimpl
from llamatelemetry_nccl import semconv as names

if TYPE_CHECKING:
    from llamatelemetry.config import TelemetrySettings
    from llamatelemetry_nccl.instrumentor import TorchDistributedInstrumentor

_auto: list[TorchDistributedInstrumentor] = []


@hookimpl
def llamatelemetry_register_instrumentors() -> list[InstrumentorSpec]:
    """``torch_distributed``: patch the ProcessGroup methods (target ignored; pass ``torch.distributed``)."""
    return [InstrumentorSpec(
        name="torch_distributed", factory="llamatelemetry_nccl.instrumentor:instrument_torch_distributed",
        uninstrument="llamatelemetry_nccl.instrumentor:uninstrument_torch_distributed",
        description="spans and metrics on torch.distributed collectives (bytes, busbw, stragglers, hangs)",
    )]


def job_id() -> str | None:
    """The job's id: ``LLAMATELEMETRY_NCCL_RUN_ID``, else torchrun's ``TORCHELASTIC_RUN_ID``."""
    from llamatelemetry_nccl.instrumentor import ENV_RUN_ID

    value = os.environ.get(ENV_RUN_ID) or os.environ.get("TORCHELASTIC_RUN_ID")
    return value if value and value != "none" else None


def rank_attributes() -> dict[str, Any]:
    """Rank, local rank, world size, host and job id of this process (from an initialized group, else the env)."""
    from llamatelemetry.distributed import ClusterTopology, in_distributed_job
    from llamatelemetry.semconv import gpu as core_names

    attributes: dict[str, Any] = {core_names.HOST_NAME: socket.gethostname()}
    # Rank 0 of 1 would be a guess: without the launcher's variables or a group, say nothing about ranks.
    if in_distributed_job():
        try:
            attributes.update(ClusterTopology.detect(devices=()).resource_attributes())
        except Exception:  # a malformed RANK is the GPU plugin's to report
            pass
    dist = sys.modules.get("torch.distributed")  # only when the application already imported it
    if dist is not None and dist.is_available() and dist.is_initialized():
        attributes[core_names.DISTRIBUTED_RANK] = dist.get_rank()
        attributes[core_names.DISTRIBUTED_WORLD_SIZE] = dist.get_world_size()
    identifier = job_id()
    if identifier:
        attributes[names.JOB_ID] = identifier
    return attributes


@hookimpl
def llamatelemetry_resource_attributes(settings: TelemetrySettings) -> dict[str, Any] | None:
    """With ``enable_nccl``: the rank's resource attributes (rank, local rank, world size, job id, host)."""
    if not settings.enable_nccl:
        identifier = job_id()
        return {names.JOB_ID: identifier} if identifier else None
    return rank_attributes()


@hookimpl
def llamatelemetry_telemetry_start(settings: TelemetrySettings, tracer_provider: Any, meter_provider: Any) -> None:
    """With ``enable_nccl``: instrument torch.distributed now, or as soon as ``init_process_group()`` returns."""
    if not settings.enable_nccl or not settings.enabled:
        return
    from llamatelemetry_nccl.instrumentor import TorchDistributedInstrumentor, active_instrumentor

    if active_instrumentor() is not None or _auto:
        return
    instrumentor = TorchDistributedInstrumentor()
    _auto.append(instrumentor)
    instrumentor.instrument_when_ready()


@hookimpl
def llamatelemetry_telemetry_shutdown(settings: TelemetrySettings) -> None:
    """Undo what ``enable_nccl`` did (records still pending are finished first)."""
    while _auto:
        _auto.pop().uninstrument()
