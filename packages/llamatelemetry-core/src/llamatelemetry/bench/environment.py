"""The environment fingerprint of a benchmark report: what ran, on what, so two reports can be compared fairly."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["environment_fingerprint", "library_versions", "cpu_info", "model_info", "server_info"]

#: Distributions whose versions change results; those not installed are left out.
_LIBRARIES = ("llamatelemetry-core", "llamatelemetry-llamacpp", "llamatelemetry-transformers", "xllamacpp",
              "llama_cpp_python", "httpx", "opentelemetry-sdk", "torch", "transformers", "nvidia-ml-py")

#: Server /props fields that describe the build and the settings that shape performance.
_PROPS_FIELDS = ("build_info", "total_slots", "model_path", "model_alias", "model_ftype", "chat_template_caps")


def library_versions() -> dict[str, str]:
    """Versions of the installed libraries that matter (read from metadata: nothing heavy is imported)."""
    from importlib import metadata

    versions = {}
    for name in _LIBRARIES:
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


def server_info(url: str | None, props: Mapping[str, Any] | None,
                model_meta: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The llama.cpp server's build and settings from ``/props`` and ``/v1/models``."""
    if url is None:
        return None
    info: dict[str, Any] = {"url": url}
    if props:
        info.update({k: props[k] for k in _PROPS_FIELDS if k in props})
        settings = props.get("default_generation_settings")
        if isinstance(settings, Mapping) and "n_ctx" in settings:
            info["n_ctx_per_slot"] = settings["n_ctx"]
    if model_meta:
        info["model_meta"] = {k: model_meta[k] for k in ("n_params", "n_ctx_train", "n_vocab", "size", "ftype")
                              if k in model_meta}
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
