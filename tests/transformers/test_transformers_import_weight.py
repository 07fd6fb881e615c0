"""The plugin stays light to load: its entry point and the core's quantization and pipeline modules import no torch."""

from __future__ import annotations

import json
from typing import Any


def test_plugin_entry_point_and_core_paths_leave_torch_out(run_python: Any) -> None:
    result = run_python("""
        import json, sys
        import llamatelemetry_transformers, llamatelemetry_transformers.plugin
        import llamatelemetry.quantization, llamatelemetry.quantization.gguf, llamatelemetry.pipeline
        from llamatelemetry.plugins import get_plugin_manager
        pm = get_plugin_manager()
        specs = sorted(pm.stages()) + sorted(pm.instrumentors()) + sorted(pm.backends())
        print(json.dumps({"heavy": [m for m in ("torch", "transformers", "tokenizers") if m in sys.modules],
                          "specs": specs}))
        """)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["heavy"] == []
    assert {"quantize:dynamic", "quantize:nf4", "transformers", "hf", "huggingface"} <= set(found["specs"])
