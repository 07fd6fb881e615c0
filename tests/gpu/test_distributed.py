"""ClusterTopology: the torch.distributed environment, local GPUs, resource attributes, and a real gloo gather."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gpu_helpers import T4_UUID, T4_UUID_2

import llamatelemetry
from llamatelemetry.distributed import ClusterTopology, NodeInfo
from llamatelemetry.errors import ConfigurationError
from llamatelemetry.gpu import GPUDevice
from llamatelemetry.semconv import gpu as names
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager
from llamatelemetry.testing.fake_nvml import FakeNVML

T4X2 = [GPUDevice(0, "Tesla T4", T4_UUID, 15360 * 1024 * 1024), GPUDevice(1, "Tesla T4", T4_UUID_2,
                                                                           15360 * 1024 * 1024)]
HOST = socket.gethostname()


def test_a_process_alone_is_rank_zero_of_one() -> None:
    topology = ClusterTopology.detect(env={}, devices=T4X2)
    assert (topology.rank, topology.world_size, topology.is_distributed) == (0, 1, False)
    assert topology.nodes == (NodeInfo(rank=0, gpu_id=0, vram_mb=15360.0, hostname=HOST),)


def test_torchrun_variables_give_this_hosts_ranks_and_their_gpus() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
    topology = ClusterTopology.detect(env=env, devices=T4X2)
    assert (topology.rank, topology.world_size, topology.local_rank) == (3, 4, 1)
    assert (topology.master_addr, topology.master_port, topology.is_distributed) == ("10.0.0.5", 29500, True)
    assert topology.nodes == (NodeInfo(2, 0, 15360.0, HOST, local_rank=0), NodeInfo(3, 1, 15360.0, HOST, local_rank=1))
    assert topology.local_node == NodeInfo(3, 1, 15360.0, HOST, local_rank=1)
    assert topology.resource_attributes() == {
        names.DISTRIBUTED_RANK: 3, names.DISTRIBUTED_WORLD_SIZE: 4, names.DISTRIBUTED_LOCAL_RANK: 1,
        names.HOST_NAME: HOST, names.DISTRIBUTED_MASTER_ADDR: "10.0.0.5"}


def test_the_local_rank_uses_the_cuda_visible_gpu() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "1"}
    assert ClusterTopology.detect(env=env, devices=T4X2).local_node.gpu_id == 1
    env["LOCAL_RANK"] = "1"  # a second local rank with one visible GPU has none of its own
    node = ClusterTopology.detect(env=env, devices=T4X2).local_node
    assert (node.gpu_id, node.vram_mb) == (None, None)


def test_without_a_gpu_nodes_have_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", "")
    assert ClusterTopology.detect(env={"RANK": "1", "WORLD_SIZE": "2"}).nodes == (NodeInfo(1, None, None, HOST),)


def test_local_gpus_come_from_nvml(fake_t4x2: FakeNVML) -> None:
    topology = ClusterTopology.detect(env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert topology.local_node == NodeInfo(1, 1, 15360.0, HOST, local_rank=1)


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "two"}, "RANK='two' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is outside WORLD_SIZE=2"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 must be >= 0"),
])
def test_a_broken_environment_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ClusterTopology.detect(env=env, devices=())


def test_rank_and_host_become_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node0"}.items():
        monkeypatch.setenv(name, value)
    with fresh_plugin_manager(), InMemoryTelemetry() as telemetry:
        with llamatelemetry.span("step"):
            pass
        resource = dict(telemetry.span("step").resource.attributes)
    assert resource[names.DISTRIBUTED_RANK] == 1 and resource[names.DISTRIBUTED_WORLD_SIZE] == 2
    assert resource[names.DISTRIBUTED_LOCAL_RANK] == 1 and resource[names.DISTRIBUTED_MASTER_ADDR] == "node0"
    assert resource[names.HOST_NAME] == HOST


def test_a_single_process_gets_no_rank_attributes() -> None:
    with fresh_plugin_manager(), InMemoryTelemetry() as telemetry:
        with llamatelemetry.span("step"):
            pass
        resource = dict(telemetry.span("step").resource.attributes)
    assert not [key for key in resource if key.startswith("llamatelemetry.distributed.")]
    assert names.HOST_NAME not in resource


def test_gather_needs_a_process_group() -> None:
    pytest.importorskip("torch.distributed")
    with pytest.raises(ConfigurationError, match="init_process_group"):
        ClusterTopology.detect(env={}, devices=()).gather()


GATHER = """
    import json, sys
    import torch.distributed as dist
    from llamatelemetry.distributed import ClusterTopology
    dist.init_process_group("gloo")
    topology = ClusterTopology.detect(devices=()).gather()
    print(json.dumps([[n.rank, n.local_rank, n.hostname, n.gpu_id] for n in topology.nodes]))
    dist.destroy_process_group()
"""


def test_gather_collects_every_rank_over_a_real_gloo_group(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed")
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(GATHER)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1] == [[0, 0, HOST, None], [1, 1, HOST, None]]


def test_a_broken_rank_variable_is_logged_and_telemetry_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RANK", "two")
    with caplog.at_level(logging.WARNING), fresh_plugin_manager(), InMemoryTelemetry() as telemetry:
        with llamatelemetry.span("step"):
            pass
        resource = dict(telemetry.span("step").resource.attributes)
    assert names.DISTRIBUTED_RANK not in resource
    assert any("No rank on the resource: RANK='two' is not an integer" in r.getMessage() for r in caplog.records)
