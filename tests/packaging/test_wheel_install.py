"""Users' install path: wheels of all six distributions in one folder, then pip install with extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ["core", "llamacpp", "transformers", "nccl", "unsloth", "kaggle"]


@pytest.mark.slow
def test_extras_install_the_named_plugins_from_a_wheel_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    for name in DISTRIBUTIONS:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                        str(ROOT / "packages" / f"llamatelemetry-{name}")],
                       check=True, capture_output=True, timeout=300)
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert len(built) == len(DISTRIBUTIONS), built

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--find-links", str(wheels),
         "llamatelemetry-core[llamacpp,nccl]"],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-4000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    listing = subprocess.run([str(env_dir / "bin" / "llamatelemetry"), "plugins", "--json"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["llamacpp"]["status"] == "loaded" and plugins["llamacpp"]["version"] == "0.1.0"
    assert plugins["nccl"]["status"] == "loaded"
    assert "transformers" not in plugins and "kaggle" not in plugins, "only the extras asked for"

    missing = subprocess.run([str(python), "-c", "import llamatelemetry.kaggle"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode != 0
    assert 'pip install "llamatelemetry-core[kaggle]"' in missing.stderr
