"""``pynvml.NVMLLibraryMismatchError`` (a plain Exception, not an NVMLError) is handled like NVML's own errors.

Some drivers make the process-list calls raise it when the bindings and the driver's library
disagree on a function's version. Tested on the FAKE NVML (this machine has no GPU).
"""

from __future__ import annotations

import logging
import time

import pytest

from llamatelemetry.gpu import GPUSampler, GPUSnapshot
from llamatelemetry.gpu.nvml import NVMLSource
from llamatelemetry.testing.fake_nvml import FakeNVML, FakeNVMLError


def test_the_fake_raises_it_outside_nvml_errors(fake_t4: FakeNVML) -> None:
    fake_t4.process_list_error = FakeNVML.NVMLLibraryMismatchError
    handle = fake_t4.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(FakeNVML.NVMLLibraryMismatchError) as info:
        fake_t4.nvmlDeviceGetComputeRunningProcesses(handle)
    assert not isinstance(info.value, FakeNVMLError)


def test_a_snapshot_without_process_lists(fake_t4: FakeNVML) -> None:
    """The snapshot has every other figure and no processes; the failing call is not repeated."""
    fake_t4.process_list_error = FakeNVML.NVMLLibraryMismatchError
    assert GPUSnapshot.capture(0).processes == ()
    source = NVMLSource.open()
    try:
        first = source.snapshot(0)
        calls = fake_t4.calls["nvmlDeviceGetComputeRunningProcesses"]
        second = source.snapshot(0)
    finally:
        source.close()
    assert first.processes == () == second.processes
    assert first.name == "Tesla T4" and first.memory_used_bytes > 0 and first.power_w is not None
    assert fake_t4.calls["nvmlDeviceGetComputeRunningProcesses"] == calls, "a mismatch will not go away"
    fake_t4.process_list_error = None
    assert GPUSnapshot.capture(0).processes, "with matching bindings the processes are listed again"


def test_the_sampler_survives_it(fake_t4: FakeNVML, caplog: pytest.LogCaptureFixture) -> None:
    """A mismatch on every read is logged once; the last good reading stays and sampling resumes."""
    with caplog.at_level(logging.DEBUG, logger="llamatelemetry.gpu"), GPUSampler.open(interval_s=0.01) as sampler:
        before = sampler.latest(0)
        fake_t4.read_error = FakeNVML.NVMLLibraryMismatchError
        fake_t4.process_list_error = FakeNVML.NVMLLibraryMismatchError
        deadline = time.monotonic() + 5
        while sum("GPU sampling failed" in r.getMessage() for r in caplog.records) < 3:
            assert time.monotonic() < deadline, "the sampler stopped sampling"
            time.sleep(0.005)
        assert sampler.running and sampler.latest(0) == before
        fake_t4.read_error = None
        fake_t4.advance(1, seconds=0.1)
        deadline = time.monotonic() + 5
        while sampler.latest(0) == before:
            assert time.monotonic() < deadline, "sampling did not resume"
            time.sleep(0.005)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "NVMLLibraryMismatchError" in warnings[0].getMessage()
