"""The exceptions of the in-process llama.cpp backend; each message says what is wrong and what to do.

Every class derives from ``LlamaCppBackendError``; those for a failure any backend can have also
derive from the core's class for it (``llamatelemetry.errors.ModelLoadError``,
``ModelNotFoundError``, ``ContextOverflowError``, ``ChatTemplateError``), so a caller catches
them the same way whatever the backend.
"""

from __future__ import annotations

import os

from llamatelemetry import errors as core
from llamatelemetry.errors import LlamaTelemetryError

__all__ = [
    "ENGINE_INSTALL_COMMAND",
    "LlamaCppBackendError",
    "LlamaCppNotInstalledError",
    "ModelFileNotFoundError",
    "NotAGGUFError",
    "TruncatedModelError",
    "ModelLoadError",
    "ContextOverflowError",
    "ChatTemplateError",
]

ENGINE_INSTALL_COMMAND = 'pip install "llamatelemetry-llamacpp[engine]"'


class LlamaCppBackendError(LlamaTelemetryError):
    """Base class of the in-process llama.cpp backend's errors."""


class LlamaCppNotInstalledError(LlamaCppBackendError, ImportError):
    """llama-cpp-python, which runs llama.cpp in this process, is not installed."""

    def __init__(self) -> None:
        self.install_command = ENGINE_INSTALL_COMMAND
        super().__init__(
            f"LlamaCppBackend needs llama-cpp-python, which is not installed. Install it with: "
            f"{ENGINE_INSTALL_COMMAND} (it compiles llama.cpp from source: prefix the command with "
            'CMAKE_ARGS="-DGGML_NATIVE=OFF" where the native CPU build crashes, or CMAKE_ARGS="-DGGML_CUDA=on" '
            "for NVIDIA GPUs).",
            name="llama_cpp",
        )


class ModelFileNotFoundError(LlamaCppBackendError, core.ModelNotFoundError):
    """The model path names no file (a ``FileNotFoundError``)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else os.fspath(path)
        if path is None:
            message = "LlamaCppBackend needs model_path=, the path of a .gguf model file."
        elif os.path.isdir(path):
            message = (f"Model path {self.path!r} is a directory, not a file: pass the path of the .gguf file "
                       "inside it.")
        else:
            message = (f"Model file {self.path!r} does not exist: check the path (relative paths start from "
                       f"{os.getcwd()!r}) or download the model first.")
        super().__init__(message)


class NotAGGUFError(LlamaCppBackendError, core.ModelLoadError, ValueError):
    """The model file is not in the GGUF format llama.cpp loads."""

    def __init__(self, path: str, head: bytes, reason: str | None = None) -> None:
        self.path = path
        self.head = head
        detail = reason or f"it starts with {head!r} instead of the GGUF magic b'GGUF'"
        super().__init__(
            f"{path!r} is not a GGUF model file: {detail}. llama.cpp loads only GGUF; convert other formats "
            "with llama.cpp's convert_hf_to_gguf.py, or check that the download saved the model and not an "
            "error page."
        )


class TruncatedModelError(LlamaCppBackendError, core.ModelLoadError, ValueError):
    """The GGUF file is shorter than its own header says: an interrupted download or copy."""

    def __init__(self, path: str, size: int, needed: int | None, where: str) -> None:
        self.path = path
        self.size = size
        self.needed = needed
        expected = f", at least {needed:,} are needed" if needed is not None else ""
        super().__init__(
            f"{path!r} is truncated: the file has {size:,} bytes{expected} ({where}). The download or copy was "
            "interrupted or the disk filled up: download the model again and compare its size or checksum."
        )


class ModelLoadError(LlamaCppBackendError, core.ModelLoadError):
    """llama.cpp could not load a file that looks like a GGUF model, or could not create its context."""


class ContextOverflowError(LlamaCppBackendError, core.ContextOverflowError):
    """The prompt does not fit in the context window, with room for at least one generated token."""

    remedy = ("create the backend with a larger context (n_ctx=..., or CudaInferenceConfig(ctx_size=...); 0 takes "
              "the model's trained context)")

    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(prompt_tokens=prompt_tokens, n_ctx=n_ctx)


class ChatTemplateError(LlamaCppBackendError, core.ChatTemplateError):
    """The model's chat format could not turn the messages into a prompt."""
