"""``import llamatelemetry`` stays light: no heavy library, no plugin, no SDK, no side effects."""

from __future__ import annotations

import json
from typing import Any

HEAVY = ["torch", "transformers", "llama_cpp", "pynvml", "httpx", "grpc", "numpy", "xllamacpp"]


def test_import_leaves_heavy_modules_out(run_python: Any) -> None:
    result = run_python(f"""
        import json, os, sys, threading
        env_before = dict(os.environ)
        threads_before = threading.active_count()
        import llamatelemetry
        print(json.dumps({{
            "heavy": [m for m in {HEAVY!r} if m in sys.modules],
            "plugins": sorted(m for m in sys.modules if m.startswith("llamatelemetry_")),
            "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
            "env_changed": dict(os.environ) != env_before,
            "threads_started": threading.active_count() - threads_before,
        }}))
        """)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found == {"heavy": [], "plugins": [], "sdk": [], "env_changed": False, "threads_started": 0}


def test_public_names_resolve_lazily(run_python: Any) -> None:
    result = run_python("""
        import sys, llamatelemetry
        assert "llamatelemetry._runtime" not in sys.modules
        names = [n for n in llamatelemetry.__all__ if n != "__version__"]
        for name in names:
            getattr(llamatelemetry, name)
        print("grpc" in sys.modules, "llamatelemetry_llamacpp" in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"], "resolving names must not load exporters or plugins"
