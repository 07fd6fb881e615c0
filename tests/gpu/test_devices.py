"""list_devices, GPUSnapshot.capture and visible_device_ids, through a FAKE NVML and a FAKE nvidia-smi."""

from __future__ import annotations

import stat
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from gpu_helpers import T4_TOTAL, T4_UUID, T4_UUID_2, t4

from llamatelemetry.gpu import GPUDevice, GPUSampler, GPUSnapshot, NoGPUError, list_devices, visible_device_ids
from llamatelemetry.gpu.records import MIB
from llamatelemetry.testing.fake_nvml import FakeNVML, FakeReading


def test_list_devices_through_nvml(fake_t4x2: FakeNVML) -> None:
    devices = list_devices()
    assert devices == [GPUDevice(0, "Tesla T4", T4_UUID, T4_TOTAL), GPUDevice(1, "Tesla T4", T4_UUID_2, T4_TOTAL)]
    assert devices[0].memory_total_mb == 15360.0
    assert devices[1].hw_id == T4_UUID_2


def test_capture_reads_every_figure_in_our_units(fake_t4: FakeNVML) -> None:
    fake_t4.advance(2)  # generating
    snapshot = GPUSnapshot.capture(0)
    assert (snapshot.name, snapshot.uuid, snapshot.source) == ("Tesla T4", T4_UUID, "nvml")
    assert snapshot.memory_used_bytes == 1028 * MIB and snapshot.memory_total_bytes == T4_TOTAL
    assert snapshot.memory_utilization == pytest.approx(1028 / 15360)
    assert snapshot.utilization == pytest.approx(0.97)
    assert snapshot.power_w == pytest.approx(70.0) and snapshot.power_limit_w == pytest.approx(70.0)
    assert snapshot.energy_j == pytest.approx(5009.0)  # 5,009,000 mJ
    assert snapshot.temperature_c == 55.0
    assert (snapshot.sm_clock_mhz, snapshot.memory_clock_mhz) == (1590, 5001)
    assert (snapshot.driver_version, snapshot.cuda_version) == ("535.183.01", "12.2")
    assert [(p.pid, p.used_memory_bytes, p.name) for p in snapshot.processes] == [(4242, 1024 * MIB,
                                                                                   "/usr/bin/python3")]
    assert snapshot.device == GPUDevice(0, "Tesla T4", T4_UUID, T4_TOTAL)


def test_figures_a_gpu_does_not_report_are_none_and_not_asked_again(
        install_fake: Callable[[FakeNVML], FakeNVML]) -> None:
    bare = t4()
    bare.readings = [FakeReading(memory_used_bytes=5 * MIB)]  # memory only: every other call is NotSupported
    bare.power_limit_mw = None
    fake = install_fake(FakeNVML([bare]))
    snapshot = GPUSnapshot.capture(0)
    assert snapshot.memory_used_bytes == 5 * MIB
    assert (snapshot.utilization, snapshot.power_w, snapshot.power_limit_w, snapshot.energy_j,
            snapshot.temperature_c, snapshot.sm_clock_mhz) == (None, None, None, None, None, None)
    with GPUSampler.open() as sampler:
        asked = fake.calls["nvmlDeviceGetPowerUsage"]
        sampler.sample()
        sampler.sample()
        assert fake.calls["nvmlDeviceGetPowerUsage"] == asked, "NotSupported is permanent: stop asking"
        assert fake.calls["nvmlDeviceGetMemoryInfo"] >= 3


def test_capture_of_a_missing_index_names_the_ones_there(fake_t4x2: FakeNVML) -> None:
    with pytest.raises(NoGPUError, match=r"There is no GPU 5: this machine has 2 NVIDIA GPU\(s\) \(indices 0-1\)"):
        GPUSnapshot.capture(5)


def test_nvml_that_fails_to_start_is_no_gpu_without_the_smi_fallback(
        install_fake: Callable[[FakeNVML], FakeNVML], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(FakeNVML([t4()], init_error=FakeNVML.NVMLError_DriverNotLoaded))
    _fake_smi(tmp_path, monkeypatch)  # present, but NVML is not missing: the driver is
    with pytest.raises(NoGPUError, match="NVML did not start \\(Driver Not Loaded\\)"):
        GPUSnapshot.capture(0)
    assert list_devices() == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 1, 2]),
        ("2,0", [2, 0]),
        ("1", [1]),
        ("", []),
        ("-1", []),
        ("0,7,1", [0]),  # CUDA stops at the first entry that names no device
        ("GPU-9a8b", [1]),  # a unique UUID prefix
        ("GPU-", []),  # ambiguous prefix
        ("1,1", [1]),
        ("MIG-abc", []),
    ],
)
def test_visible_device_ids(value: str | None, expected: list[int]) -> None:
    devices = [GPUDevice(0, "T4", T4_UUID, 1), GPUDevice(1, "T4", T4_UUID_2, 1),
               GPUDevice(2, "A100", "GPU-77", 1)]
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_device_ids(devices, env) == expected


# ----------------------------------------------------------------------------- the nvidia-smi fallback

# Output shaped as nvidia-smi 535 prints it for --format=csv,noheader,nounits (FAKE binary, recorded shape).
SMI_GPUS = (f"0, {T4_UUID}, Tesla T4, 1026, 15360, 3, 27.31, 70.00, 42, 1590, 5000, 535.183.01\n"
            f"1, {T4_UUID_2}, Tesla T4, 2, 15360, 0, [N/A], 70.00, 40, 300, 405, 535.183.01\n")
SMI_APPS = f"{T4_UUID}, 4242, /usr/bin/python3, 1024\n{T4_UUID}, 4243, [Not Found], [N/A]\n"
SMI_SUMMARY = "| NVIDIA-SMI 535.183.01             Driver Version: 535.183.01   CUDA Version: 12.2     |\n"


def _fake_smi(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FAKE nvidia-smi on PATH (a Python script answering the queries llamatelemetry makes)."""
    script = folder / "nvidia-smi"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        args = " ".join(sys.argv[1:])
        if "--query-gpu" in args:
            sys.stdout.write({SMI_GPUS!r})
        elif "--query-compute-apps" in args:
            sys.stdout.write({SMI_APPS!r})
        else:
            sys.stdout.write({SMI_SUMMARY!r})
        """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(folder))
    return script


@pytest.fixture
def smi_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """NVML missing (the bindings cannot be imported) and a FAKE nvidia-smi on PATH."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    return _fake_smi(tmp_path, monkeypatch)


def test_nvidia_smi_is_the_fallback_where_nvml_is_missing(smi_only: Path) -> None:
    assert list_devices() == [GPUDevice(0, "Tesla T4", T4_UUID, T4_TOTAL), GPUDevice(1, "Tesla T4", T4_UUID_2,
                                                                                      T4_TOTAL)]
    snapshot = GPUSnapshot.capture(0)
    assert snapshot.source == "nvidia-smi"
    assert snapshot.memory_used_bytes == 1026 * MIB
    assert snapshot.utilization == pytest.approx(0.03) and snapshot.power_w == pytest.approx(27.31)
    assert (snapshot.sm_clock_mhz, snapshot.memory_clock_mhz, snapshot.temperature_c) == (1590, 5000, 42.0)
    assert (snapshot.driver_version, snapshot.cuda_version, snapshot.energy_j) == ("535.183.01", "12.2", None)
    assert [(p.pid, p.used_memory_bytes, p.name) for p in snapshot.processes] == [
        (4242, 1024 * MIB, "/usr/bin/python3"), (4243, None, None)]
    assert GPUSnapshot.capture(1).power_w is None, "[N/A] is not a number"


def test_sampling_through_nvidia_smi_is_at_most_once_a_second_and_integrates_power(smi_only: Path) -> None:
    with GPUSampler.open(interval_s=0.1) as sampler:
        assert sampler.interval_s == 1.0 and sampler.source_kind == "nvidia-smi"
        first = sampler.latest(0)
        assert first is not None and first.energy_j == 0.0, "no counter: the integral starts at the first sample"
        sampler.sample()
        second = sampler.latest(0)
        assert second is not None and second.energy_j == pytest.approx(27.31 * (second.time - first.time))
        assert sampler.latest(1) is not None and sampler.latest(1).energy_j is None  # type: ignore[union-attr]


def test_a_failing_nvidia_smi_is_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                      "driver.\"\nexit 9\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert list_devices() == []
    with pytest.raises(NoGPUError, match="couldn't communicate with the NVIDIA driver"):
        GPUSnapshot.capture(0)


# ---------------------------------------------------------------- compute capability


def test_compute_capability_comes_from_nvml_once_per_gpu(install_fake: Callable[[FakeNVML], FakeNVML]) -> None:
    """NVML's (major, minor) is on the device and the snapshot; a fixed fact, asked once per GPU per source."""
    from llamatelemetry.gpu import open_source

    fake = install_fake(FakeNVML([attrs.evolve(t4(), compute_capability=(7, 5)),
                                  attrs.evolve(t4(T4_UUID_2, pid=4243), compute_capability=(8, 9))]))
    devices = list_devices()
    assert [d.compute_capability for d in devices] == [(7, 5), (8, 9)]
    assert devices[0] == GPUDevice(0, "Tesla T4", T4_UUID, T4_TOTAL, compute_capability=(7, 5))
    assert [d.compute_capability_text for d in devices] == ["7.5", "8.9"]
    assert fake.calls["nvmlDeviceGetCudaComputeCapability"] == 2
    with open_source() as source:
        listed = source.devices()
        snapshot = source.snapshot(1)
        source.snapshot(1)
    assert snapshot.compute_capability == (8, 9) and snapshot.device == listed[1]
    assert fake.calls["nvmlDeviceGetCudaComputeCapability"] == 4, "two more for the new source, none per snapshot"
    assert fake.initialized == 0


def test_compute_capability_is_none_where_the_driver_cannot_say(install_fake: Callable[[FakeNVML], FakeNVML]) -> None:
    """NotSupported, or bindings older than the call: None, never a guess; the rest still reads."""
    fake = install_fake(FakeNVML([t4()]))  # the fake answers NotSupported for a GPU given no capability
    (device,) = list_devices()
    assert device.compute_capability is None and device.compute_capability_text is None
    assert device == GPUDevice(0, "Tesla T4", T4_UUID, T4_TOTAL)
    assert GPUSnapshot.capture(0).compute_capability is None
    assert fake.calls["nvmlDeviceGetCudaComputeCapability"] == 2

    class FakeOldBindings(FakeNVML):
        """A FAKE pynvml from before ``nvmlDeviceGetCudaComputeCapability`` existed."""

        nvmlDeviceGetCudaComputeCapability = None

    old = install_fake(FakeOldBindings([attrs.evolve(t4(), compute_capability=(7, 5))]))
    assert [d.compute_capability for d in list_devices()] == [None]
    assert old.calls["nvmlDeviceGetCudaComputeCapability"] == 0


def test_doctor_shows_each_gpus_compute_capability(install_fake: Callable[[FakeNVML], FakeNVML],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`llamatelemetry doctor` lists each GPU with NVML's compute capability; nothing made up where it cannot say."""
    import json

    from llamatelemetry.cli import main

    install_fake(FakeNVML([attrs.evolve(t4(), compute_capability=(7, 5)), t4(T4_UUID_2, pid=4243)]))
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  [0] Tesla T4, compute capability 7.5" in lines and "  [1] Tesla T4" in lines
    assert main(["doctor", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)["gpu"]["details"]
    assert [(d["index"], d["compute_capability"]) for d in details] == [(0, "7.5"), (1, None)]


@pytest.mark.gpu
def test_real_nvml_gives_the_compute_capability_nvidia_smi_reports() -> None:
    """On a real NVIDIA GPU (skipped elsewhere): NVML's answer, read by the GPU module, is nvidia-smi's compute_cap."""
    import shutil
    import subprocess

    binary = shutil.which("nvidia-smi")
    if binary is None:
        pytest.skip("nvidia-smi is not on PATH: nothing to compare NVML's answer with")
    done = subprocess.run([binary, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"this nvidia-smi cannot report compute_cap: {done.stdout.strip()} {done.stderr.strip()}")
    devices = list_devices()
    assert devices, "the gpu marker promised a GPU"
    assert [d.compute_capability_text for d in devices] == [line.strip() for line in done.stdout.splitlines()
                                                            if line.strip()]
