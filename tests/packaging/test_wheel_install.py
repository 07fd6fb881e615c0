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

    # Every path the API reference gives for a missing plugin names the same install command, taken
    # from the installed core's metadata (its llamatelemetry.extras entry points and extras).
    probe = subprocess.run([str(python), "-c", """
import logging, llamatelemetry
from llamatelemetry.errors import BackendNotFoundError, PluginNotInstalledError
from llamatelemetry.inference import create_engine
for attempt in ("from llamatelemetry.backends import TransformersBackend",
                "from llamatelemetry.sdk import instrument_transformers",
                "import llamatelemetry.unsloth"):
    try:
        exec(attempt)
    except PluginNotInstalledError as exc:
        print(exc)
try:
    create_engine("transformers")
except BackendNotFoundError as exc:
    print(exc)
import llamatelemetry.llama, llamatelemetry_llamacpp
print("alias", llamatelemetry.llama is llamatelemetry_llamacpp)
"""], capture_output=True, text=True, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert len(lines) == 5, probe.stdout
    for line in lines[:2] + lines[3:4]:
        assert 'pip install "llamatelemetry-core[transformers]"' in line, line
    assert 'pip install "llamatelemetry-core[unsloth]"' in lines[2]
    assert lines[4] == "alias True"
