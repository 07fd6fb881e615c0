"""The library folders a CUDA build of llama.cpp needs, for the servers we start (never for this process).

The dynamic loader reads ``LD_LIBRARY_PATH`` once, when a process starts: setting it inside a
running notebook changes nothing for the notebook, and would leak into every program it starts.
So the path is computed here and handed to ``ServerManager(library_path=...)``, which puts it in
the started server's environment only.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

__all__ = ["cuda_library_path"]

# Where Kaggle's GPU image keeps the driver's and the CUDA toolkit's libraries.
_SYSTEM_FOLDERS = ("usr/local/nvidia/lib64", "usr/local/nvidia/lib", "usr/local/cuda/lib64")


def _under(root: Path, path: str) -> Path:
    return root / Path(path).relative_to(Path(path).anchor) if root != Path("/") else Path(path)


def cuda_library_path(root: str | os.PathLike[str] = "/") -> tuple[str, ...]:
    """Existing folders with CUDA libraries: the driver's, the toolkit's, then pip's ``nvidia-*`` wheels.

    ``root`` re-roots every look-up (tests use a temporary folder). Folders already on this
    process's ``LD_LIBRARY_PATH`` are left to ``ServerManager``, which keeps them after these.
    """
    base = Path(root)
    found: list[Path] = [base / folder for folder in _SYSTEM_FOLDERS]
    # CUDA runtime, cuBLAS, ... installed as pip wheels (nvidia-cuda-runtime-cu12, nvidia-cublas-cu12)
    # live in site-packages/nvidia/<component>/lib; a CUDA build of llama-cpp-python links against them.
    paths = sysconfig.get_paths()
    for site in dict.fromkeys((paths["purelib"], paths["platlib"])):
        nvidia = _under(base, site) / "nvidia"
        if nvidia.is_dir():
            found += sorted(child / "lib" for child in nvidia.iterdir())
    return tuple(dict.fromkeys(str(folder) for folder in found if folder.is_dir()))
