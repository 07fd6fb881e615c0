"""The real NVML path, on a machine with an NVIDIA GPU (skipped elsewhere by the root conftest).

Each test prints what it measured (run with ``-s``) so the figures can be copied into docs/gpu.md;
set ``LLAMATELEMETRY_GPU_REPORT=<file>`` to also get them as JSON lines.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from llamatelemetry.gpu import GPUSampler, GPUSnapshot, list_devices
from llamatelemetry.gpu.plugin import running_sampler
from llamatelemetry.inference import InferenceEngine, InferenceRequest, InferenceResult
from llamatelemetry.semconv import gpu as names
from llamatelemetry.semconv import hw
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

pytestmark = pytest.mark.gpu


def _report(what: str, figures: dict[str, Any]) -> None:
    print(f"\n[gpu] {what}: {json.dumps(figures, default=str)}")
    path = os.environ.get("LLAMATELEMETRY_GPU_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"what": what, **figures}, default=str) + "\n")


def test_devices_and_a_snapshot_through_nvml() -> None:
    devices = list_devices()
    assert devices, "the gpu marker promised a GPU"
    snapshot = GPUSnapshot.capture(devices[0].index)
    assert snapshot.source == "nvml"
    assert snapshot.uuid.startswith(("GPU-", "MIG-")) and snapshot.name
    assert 0 < snapshot.memory_used_bytes <= snapshot.memory_total_bytes == devices[0].memory_total_bytes
    assert snapshot.driver_version and snapshot.cuda_version
    assert snapshot.utilization is None or 0.0 <= snapshot.utilization <= 1.0
    _report("snapshot", {"devices": [d.name for d in devices], **{
        k: getattr(snapshot, k) for k in ("name", "memory_used_bytes", "memory_total_bytes", "utilization", "power_w",
                                          "power_limit_w", "energy_j", "temperature_c", "sm_clock_mhz",
                                          "memory_clock_mhz", "driver_version", "cuda_version")}})


def test_the_sampler_thread_keeps_fresh_readings() -> None:
    with GPUSampler.open(interval_s=0.05) as sampler:
        first = {i: sampler.latest(i) for i in sampler.device_ids}
        time.sleep(0.5)
        later = {i: sampler.latest(i) for i in sampler.device_ids}
    for index in sampler.device_ids:
        before, after = first[index], later[index]
        assert before is not None and after is not None and after.time > before.time
        if before.energy_j is not None and after.energy_j is not None:
            assert after.energy_j >= before.energy_j, "the energy counter never goes back"
    _report("sampler", {"interval_s": sampler.interval_s, "readings": [later[i] for i in sampler.device_ids]})


class TinyLlamaOnCuda:
    """A real generation on the GPU: a small random-weight Llama built in code (no download), greedy decoding."""

    provider_name = "transformers"
    model_name = "tiny-random-llama"

    def __init__(self, new_tokens: int) -> None:
        self.new_tokens = new_tokens
        self.model: Any = None

    def start(self) -> None:
        """Build the model on cuda:0."""
        torch = pytest.importorskip("torch")
        transformers = pytest.importorskip("transformers")
        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA here")
        config = transformers.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                                          num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8)
        torch.manual_seed(0)
        self.model = transformers.LlamaForCausalLM(config).to("cuda:0", dtype=torch.float16).eval()

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Decode ``new_tokens`` tokens greedily."""
        import torch

        prompt = torch.randint(0, 32000, (1, 64), device="cuda:0")
        with torch.no_grad():
            output = self.model.generate(prompt, max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens,
                                         do_sample=False)
        torch.cuda.synchronize()
        return InferenceResult(text="", input_tokens=64, output_tokens=int(output.shape[1] - 64),
                               request_id=request.request_id)

    def shutdown(self) -> None:
        """Free the GPU memory."""
        self.model = None


def test_a_real_generation_span_gets_vram_and_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMATELEMETRY_GPU_DEVICES", "0")
    request = InferenceRequest(messages=[{"role": "user", "content": "x"}], max_tokens=256)
    with fresh_plugin_manager(), InMemoryTelemetry(enable_gpu=True) as telemetry, \
            InferenceEngine(TinyLlamaOnCuda(new_tokens=256)) as engine:
        assert running_sampler() is not None
        engine.generate(request)  # warm-up: CUDA kernels load
        telemetry.clear()
        result = engine.generate(request)
        span = dict(telemetry.span("chat tiny-random-llama").attributes or {})
        power = [p.value for p in telemetry.metric_points(hw.HW_POWER)]
    assert result.output_tokens == 256
    assert span[names.GPU_DEVICE_ID] == 0
    assert span[names.GPU_MEMORY_PEAK] >= max(span[names.GPU_MEMORY_BEFORE], span[names.GPU_MEMORY_AFTER])
    assert power and all(p > 0 for p in power)
    if names.GPU_ENERGY in span:  # GPUs before Volta have no energy counter and may report no power
        assert span[names.GPU_ENERGY] > 0
        assert span[names.GPU_ENERGY_PER_OUTPUT_TOKEN] == pytest.approx(span[names.GPU_ENERGY] / 256)
    _report("generation", {"device": list_devices()[0].name, **{k: v for k, v in span.items()
                                                                if k.startswith("llamatelemetry.gpu")}})
