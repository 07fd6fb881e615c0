"""GPU telemetry stays out of the way: nothing heavy at import, no NVML unless a GPU is asked for."""

from __future__ import annotations

import json
from typing import Any

HEAVY = ["pynvml", "torch", "numpy", "opentelemetry.sdk"]


def test_importing_the_gpu_modules_loads_no_nvml(run_python: Any) -> None:
    result = run_python(f"""
        import json, sys, threading
        import llamatelemetry.gpu, llamatelemetry.distributed, llamatelemetry.semconv.hw, llamatelemetry.semconv.gpu
        print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules],
                          "threads": threading.active_count()}}))
        """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"heavy": [], "threads": 1}


def test_init_without_enable_gpu_never_touches_nvml(run_python: Any) -> None:
    result = run_python("""
        import sys, llamatelemetry
        llamatelemetry.init(service_name="x", traces_exporter="none", metrics_exporter="none")
        llamatelemetry.shutdown()
        print("pynvml" in sys.modules, "llamatelemetry.gpu.plugin" in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"], "the built-in GPU plugin is registered, NVML is not loaded"
