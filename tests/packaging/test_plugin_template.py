"""A plugin made from _template/ builds, installs and registers its hook."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("new_plugin", ROOT / "_template" / "new_plugin.py")
assert spec is not None and spec.loader is not None
new_plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(new_plugin)


def test_template_builds_installs_and_registers(tmp_path: Path) -> None:
    target = new_plugin.create("acme_tenant", tmp_path, "Adds the tenant to every span.")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "src/llamatelemetry_acme_tenant/__init__.py",
        "src/llamatelemetry_acme_tenant/plugin.py", "src/llamatelemetry_acme_tenant/py.typed",
    ]
    assert "__name__" not in (target / "pyproject.toml").read_text()
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(target)],
                   check=True, capture_output=True, timeout=300)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    listing = subprocess.run([sys.executable, "-m", "llamatelemetry", "plugins", "--json"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["acme_tenant"]["distribution"] == "llamatelemetry-acme_tenant"
    assert plugins["acme_tenant"]["status"] == "loaded"
    assert plugins["acme_tenant"]["provides"]["hooks"] == ["request_start"]


@pytest.mark.parametrize("bad", ["Acme", "acme-tenant", "1acme", ""])
def test_template_refuses_bad_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="lowercase letters"):
        new_plugin.create(bad, tmp_path)


def test_template_refuses_to_overwrite(tmp_path: Path) -> None:
    new_plugin.create("twice", tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        new_plugin.create("twice", tmp_path)
