"""Real viewers: Arize Phoenix reading the demo's trace, headless Chromium opening the bench page.

These tests run in the nox session ``viewers`` (its own environment: Phoenix is about 850 MB and pins
its own libraries, so it stays out of the main test environment; Chromium is Debian's ``chromium``).
The main test run does not collect a module whose tool is not installed; the session sets
``LLAMATELEMETRY_VIEWER_TESTS=1``, so there a missing tool is an import error, never a quiet skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from contextlib import closing
from pathlib import Path

import pytest

#: Module -> the top-level package that module needs; without it (outside the ``viewers`` session) it is not collected.
_NEEDS = {"test_phoenix.py": "phoenix", "test_bench_page_in_chromium.py": "playwright"}
_REQUIRED = os.environ.get("LLAMATELEMETRY_VIEWER_TESTS", "") == "1"


def _installed(module: str) -> bool:
    # A top-level name only: find_spec of a submodule imports its package (Phoenix's takes about 18 s).
    return importlib.util.find_spec(module) is not None


collect_ignore = [] if _REQUIRED else [name for name, module in _NEEDS.items() if not _installed(module)]

#: Debian's chromium package puts the browser binary here (/usr/bin/chromium is a shell wrapper).
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The Chromium binary Playwright drives (Debian's; ``playwright install`` cannot download browsers here)."""
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
    pytest.fail("Chromium is not installed: apt-get install --no-install-recommends chromium fonts-dejavu-core "
                "(.ci/run does this before the viewers session)")


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
