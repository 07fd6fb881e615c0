"""Where the ranks of a torch.distributed job run: ``ClusterTopology`` and ``NodeInfo``.

``ClusterTopology.detect()`` reads the variables torchrun (and ``torch.distributed.launch``,
Slurm wrappers, ...) set — ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` — and this machine's GPUs. It imports neither torch nor NVML
unless asked: ``gather()`` collects every rank's ``NodeInfo`` over an initialized process group.

Example::

    from llamatelemetry.distributed import ClusterTopology

    topology = ClusterTopology.detect()
    for node in topology.nodes:
        print(node.rank, node.gpu_id, node.vram_mb, node.hostname)
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from llamatelemetry.errors import ConfigurationError
from llamatelemetry.gpu.records import GPUDevice
from llamatelemetry.semconv import gpu as names

__all__ = ["ClusterTopology", "NodeInfo"]

#: The variables that mark a process as one rank of a distributed job.
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE")


@attrs.frozen
class NodeInfo:
    """One rank of a distributed job: which host it runs on and which GPU it uses.

    ``gpu_id`` is the NVML index of the rank's GPU (CUDA device ``local_rank`` through
    ``CUDA_VISIBLE_DEVICES``), ``None`` without one; ``vram_mb`` is that GPU's total memory in
    MiB.

    Example::

        NodeInfo(rank=1, gpu_id=1, vram_mb=15360.0, hostname="kaggle-t4x2", local_rank=1)
    """

    rank: int
    gpu_id: int | None
    vram_mb: float | None
    hostname: str
    local_rank: int = 0


@attrs.frozen
class ClusterTopology:
    """The distributed job this process belongs to (a one-rank "job" when it runs alone).

    ``nodes`` holds the ranks known here: this one, plus the other ranks of this host when
    ``LOCAL_WORLD_SIZE`` is set (torchrun gives each host a contiguous block of ranks); call
    ``gather()`` on every rank to learn all of them.

    Example::

        topology = ClusterTopology.detect()
        topology.rank, topology.world_size, topology.local_node.gpu_id
    """

    rank: int
    world_size: int
    local_rank: int
    hostname: str
    master_addr: str | None = None
    master_port: int | None = None
    nodes: tuple[NodeInfo, ...] = ()

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None,
               devices: Sequence[GPUDevice] | None = None) -> ClusterTopology:
        """Read the torch.distributed variables and this machine's GPUs (``devices``: skip the GPU look-up)."""
        env = os.environ if env is None else env
        rank = _int_var(env, "RANK", 0)
        world_size = _int_var(env, "WORLD_SIZE", 1)
        local_rank = _int_var(env, "LOCAL_RANK", 0)
        local_world_size = _int_var(env, "LOCAL_WORLD_SIZE", 0)
        if not 0 <= rank < world_size:
            raise ConfigurationError(f"RANK={rank} is outside WORLD_SIZE={world_size}: a rank must be in "
                                     f"0..WORLD_SIZE-1. Check the launcher's environment.")
        if devices is None:
            from llamatelemetry.gpu.sources import list_devices

            devices = list_devices()
        from llamatelemetry.gpu.sources import visible_device_ids

        visible = visible_device_ids(devices, env)
        by_index = {device.index: device for device in devices}
        hostname = socket.gethostname()

        def node(node_rank: int, node_local_rank: int) -> NodeInfo:
            gpu_id = visible[node_local_rank] if 0 <= node_local_rank < len(visible) else None
            vram = by_index[gpu_id].memory_total_mb if gpu_id is not None else None
            return NodeInfo(rank=node_rank, gpu_id=gpu_id, vram_mb=vram, hostname=hostname, local_rank=node_local_rank)

        if local_world_size > local_rank:
            first = rank - local_rank
            nodes = tuple(node(first + i, i) for i in range(local_world_size) if 0 <= first + i < world_size)
        else:
            nodes = (node(rank, local_rank),)
        master_port = _int_var(env, "MASTER_PORT", 0) or None
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, hostname=hostname,
                   master_addr=env.get("MASTER_ADDR") or None, master_port=master_port, nodes=nodes)

    @property
    def is_distributed(self) -> bool:
        """Whether this process is one of several ranks."""
        return self.world_size > 1

    @property
    def local_node(self) -> NodeInfo:
        """This process's rank."""
        for node in self.nodes:
            if node.rank == self.rank:
                return node
        return NodeInfo(rank=self.rank, gpu_id=None, vram_mb=None, hostname=self.hostname, local_rank=self.local_rank)

    def resource_attributes(self) -> dict[str, Any]:
        """The OpenTelemetry resource attributes of this rank (rank, world size, local rank, host)."""
        attributes: dict[str, Any] = {
            names.DISTRIBUTED_RANK: self.rank,
            names.DISTRIBUTED_WORLD_SIZE: self.world_size,
            names.DISTRIBUTED_LOCAL_RANK: self.local_rank,
            names.HOST_NAME: self.hostname,
        }
        if self.master_addr:
            attributes[names.DISTRIBUTED_MASTER_ADDR] = self.master_addr
        return attributes

    def gather(self) -> ClusterTopology:
        """Every rank's ``NodeInfo``, collected over the initialized torch.distributed group (call it on every rank)."""
        try:
            dist: Any = importlib.import_module("torch.distributed")
        except ImportError:
            raise ConfigurationError("ClusterTopology.gather() needs torch (torch.distributed); "
                                     "detect() alone does not.") from None
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigurationError("ClusterTopology.gather() needs an initialized process group: call "
                                     "torch.distributed.init_process_group() on every rank first.")
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.local_node)
        nodes = tuple(sorted((n for n in gathered if isinstance(n, NodeInfo)), key=lambda n: n.rank))
        return attrs.evolve(self, world_size=dist.get_world_size(), rank=dist.get_rank(), nodes=nodes)


def in_distributed_job(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment says this process is a rank of a distributed job (``RANK`` or ``WORLD_SIZE`` set)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in DISTRIBUTED_VARIABLES)


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not an integer; torch.distributed launchers set it "
                                 "to a whole number.") from None
    if number < 0:
        raise ConfigurationError(f"{name}={number} must be >= 0.")
    return number
