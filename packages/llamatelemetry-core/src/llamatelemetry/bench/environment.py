"""The environment fingerprint of a benchmark report: what ran, on what, so two reports can be compared fairly."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["environment_fingerprint", "library_versions", "cpu_info", "model_info"]

#: Distributions whose versions change results, besides every plugin's and what plugins depend on.
_LIBRARIES = ("llamatelemetry-core", "httpx", "opentelemetry-sdk", "torch", "transformers", "nvidia-ml-py")


def _plugin_distributions() -> list[str]:
    """The distributions of the loaded plugins, and the libraries their extras name (what they run on)."""
    from importlib import metadata

    from llamatelemetry.plugins import get_plugin_manager

    found: list[str] = []
    for info in get_plugin_manager().plugin_infos():
        if not info.distribution or info.distribution in found:
            continue
        found.append(info.distribution)
        try:
            requires = metadata.requires(info.distribution) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:  # an optional engine or server library (llama-cpp-python, xllamacpp)
                name = requirement.split(";")[0].strip()
                for stop in "<>=!~[ (":
                    name = name.split(stop)[0]
                found.append(name)
    return found


def library_versions() -> dict[str, str]:
    """Versions of the installed libraries that matter (read from metadata: nothing heavy is imported)."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in (*_LIBRARIES, *_plugin_distributions()):
        if name in versions:
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_info() -> dict[str, Any]:
    """CPU model, logical cores and total memory."""
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform.processor() is the best there is
    info: dict[str, Any] = {"model": model, "logical_cores": os.cpu_count(), "machine": platform.machine()}
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_total_bytes"] = int(pages * page_size)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def model_info(path: str | os.PathLike[str] | None, *, name: str | None = None,
               hash_file: bool = True) -> dict[str, Any] | None:
    """Model name, and for a local file its path, size and sha256 (``hash_file=False`` skips the hash)."""
    from llamatelemetry.semconv.mapping import model_display_name

    if path is None:
        return {"name": model_display_name(name)} if name else None
    file = Path(path).expanduser()
    info: dict[str, Any] = {"name": model_display_name(name or str(file)), "path": str(file)}
    if file.is_file():
        info["size_bytes"] = file.stat().st_size
        if hash_file:
            from llamatelemetry.artifacts import sha256_file

            info["sha256"] = sha256_file(file)
    return info


def environment_fingerprint(*, server: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                            backend: str | None = None, gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole fingerprint: libraries, Python, platform, CPU, GPU, model and server."""
    return {
        "libraries": library_versions(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()},
        "cpu": cpu_info(),
        "gpu": gpu,
        "backend": backend,
        "model": model,
        "server": server,
    }
