"""Helpers of the GPU tests: a FAKE Tesla T4, and a real in-process backend that needs no GPU.

Where the fake T4's figures come from (no GPU was available to record a run):

- identity and idle figures are those a real Tesla T4 reports in a published ``nvidia-smi`` /
  ``nvidia-smi dmon`` output (driver 535.183.01, CUDA 12.2, 15360 MiB, 10 W of a 70 W limit,
  40 C, 300 MHz SM / 405 MHz memory clocks, 2 MiB used);
- load figures stay within the T4's datasheet limits (70 W, 1590 MHz SM boost, 5001 MHz memory);
- the time series (memory growing while a model loads, power while it generates, the energy
  counter) is CONSTRUCTED so the arithmetic has known answers. Replace it with a recording once
  the ``gpu``-marked tests have run on a real GPU (see docs/gpu.md).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from llamatelemetry.gpu.records import MIB
from llamatelemetry.inference import InferenceRequest, InferenceResult
from llamatelemetry.testing.fake_nvml import FakeDevice, FakeProcess, FakeReading

T4_UUID = "GPU-5c1e1a59-7d2f-4a51-9b1e-2f3d4c5b6a70"
T4_UUID_2 = "GPU-9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
T4_TOTAL = 15360 * MIB


def t4_readings() -> list[FakeReading]:
    """Idle, then 1 GiB of model loaded, then generation: power at the limit and the counter climbing."""
    idle = FakeReading(memory_used_bytes=2 * MIB, utilization_pct=0, power_mw=10_000, energy_mj=5_000_000,
                       temperature_c=40, sm_clock_mhz=300, memory_clock_mhz=405)
    loaded = FakeReading(memory_used_bytes=1026 * MIB, utilization_pct=3, power_mw=27_000, energy_mj=5_002_000,
                         temperature_c=42, sm_clock_mhz=1590, memory_clock_mhz=5001)
    # Generation: each step is 0.1 s at 70 W (7 J = 7,000 mJ), the KV cache grows 2 MiB then is freed.
    generating = [FakeReading(memory_used_bytes=(1026 + used) * MIB, utilization_pct=97, power_mw=70_000,
                              energy_mj=5_002_000 + 7_000 * (i + 1), temperature_c=55, sm_clock_mhz=1590,
                              memory_clock_mhz=5001)
                  for i, used in enumerate((2, 4, 2))]
    # Done: the KV cache is freed, power falls back; the counter goes on (0.1 s at 27 W = 2.7 J).
    done = attrs.evolve(loaded, energy_mj=5_023_000 + 2_700, temperature_c=50)
    return [idle, loaded, *generating, done]


def t4(uuid: str = T4_UUID, *, energy_counter: bool = True, pid: int = 4242) -> FakeDevice:
    """A FAKE Tesla T4 (see the module docstring for what is real about it)."""
    readings = t4_readings()
    if not energy_counter:  # a GPU without the counter (pre-Volta, some vGPUs): NVML says NotSupported
        readings = [attrs.evolve(r, energy_mj=None) for r in readings]
    return FakeDevice(name="Tesla T4", uuid=uuid, memory_total_bytes=T4_TOTAL, readings=readings,
                      power_limit_mw=70_000, processes=[FakeProcess(pid, 1024 * MIB, "/usr/bin/python3")])


class EchoBackend:
    """A real in-process backend with no GPU: it echoes the prompt's words (``on_generate`` runs meanwhile)."""

    provider_name = "echo"
    model_name = "echo-model"

    def __init__(self, on_generate: Callable[[], object] | None = None) -> None:
        self.on_generate = on_generate

    def start(self) -> None:
        """Nothing to load."""

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Echo the words back, one output token per word."""
        if self.on_generate is not None:
            self.on_generate()
        words = request.prompt_text.split()
        return InferenceResult(text=" ".join(words), input_tokens=len(words), output_tokens=len(words),
                               request_id=request.request_id)

    def shutdown(self) -> None:
        """Nothing to release."""
