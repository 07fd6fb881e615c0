"""``llamatelemetry demo --viewer`` where Arize Phoenix is not installed: a clear error with the install command.

Phoenix is optional (about 850 MB): the main test environment does not have it, and runs these; the
``viewers`` session has it, and skips them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llamatelemetry_llamacpp.viewer import PhoenixNotInstalledError, phoenix_installed

pytestmark = pytest.mark.may_skip("Phoenix is installed here (the viewers session); its absence is tested elsewhere")


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "llamatelemetry", "demo", "--tiny", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_viewer_without_phoenix_names_the_install_command() -> None:
    if phoenix_installed():
        pytest.skip("arize-phoenix is installed in this environment")
    done = _demo("--viewer")
    assert done.returncode == 1
    assert "llamatelemetry demo --viewer: the trace viewer needs Arize Phoenix" in done.stderr
    assert "pip install arize-phoenix" in done.stderr
    # It stops before starting anything: no llama.cpp server, no request.
    assert "generated text" not in done.stdout and "Traceback" not in done.stderr


def test_the_error_is_an_import_error_with_the_command() -> None:
    error = PhoenixNotInstalledError()
    assert isinstance(error, ImportError) and error.name == "phoenix"
    assert error.install_command == "pip install arize-phoenix" and error.install_command in str(error)


def test_viewer_and_an_otlp_endpoint_are_exclusive() -> None:
    done = _demo("--viewer", "--otlp-endpoint", "http://127.0.0.1:4317")
    assert done.returncode == 1 and "drop --otlp-endpoint" in done.stderr
