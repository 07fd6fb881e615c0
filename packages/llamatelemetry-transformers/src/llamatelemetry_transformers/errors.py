"""The exceptions of the transformers plugin; each message says what is wrong and what to do.

Every class derives from ``TransformersBackendError``; those for a failure any backend can have
also derive from the core's class for it (``llamatelemetry.errors.ModelLoadError``,
``ModelNotFoundError``, ``ContextOverflowError``, ``ChatTemplateError``), so a caller catches
them the same way whatever the backend.
"""

from __future__ import annotations

import os

from llamatelemetry import errors as core
from llamatelemetry.errors import LlamaTelemetryError

__all__ = [
    "ENGINE_INSTALL_COMMAND",
    "TransformersBackendError",
    "TransformersNotInstalledError",
    "ModelFolderNotFoundError",
    "ModelLoadError",
    "ContextOverflowError",
    "ChatTemplateError",
    "QuantizationError",
    "QuantizationUnavailableError",
]

ENGINE_INSTALL_COMMAND = 'pip install "llamatelemetry-transformers[engine]"'


class TransformersBackendError(LlamaTelemetryError):
    """Base class of the transformers plugin's errors."""


class TransformersNotInstalledError(TransformersBackendError, ImportError):
    """torch or transformers, which the plugin runs models with, is not installed."""

    def __init__(self, missing: str, feature: str = "TransformersBackend") -> None:
        self.install_command = ENGINE_INSTALL_COMMAND
        super().__init__(
            f"{feature} needs {missing}, which is not installed. Install it with: {ENGINE_INSTALL_COMMAND} "
            "(where torch is already installed, as on Kaggle or Colab, pip keeps that build; otherwise install "
            "the torch build for your CUDA version first, from pytorch.org).",
            name=missing,
        )


class ModelFolderNotFoundError(TransformersBackendError, core.ModelNotFoundError):
    """The model path names no folder holding a transformers model (a ``FileNotFoundError``)."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        if path is None:
            message = ("TransformersBackend needs model_path= (a folder written by save_pretrained) or model= and "
                       "tokenizer= (objects you already loaded).")
        elif reason is not None:
            message = f"{self.path!r} is not a transformers model folder: {reason}."
        else:
            message = (f"Model folder {self.path!r} does not exist: check the path (relative paths start from "
                       f"{os.getcwd()!r}). To download a Hugging Face Hub id instead, pass local_files_only=False.")
        super().__init__(message)


class ModelLoadError(TransformersBackendError, core.ModelLoadError):
    """transformers could not load the model or tokenizer from a folder that looks right."""


class ContextOverflowError(TransformersBackendError, core.ContextOverflowError):
    """The prompt does not fit in the context window, with room for at least one generated token."""

    remedy = ("raise the limit with CudaInferenceConfig(ctx_size=...) or max_context= when the model supports "
              "longer inputs")

    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(prompt_tokens=prompt_tokens, n_ctx=n_ctx)


class ChatTemplateError(TransformersBackendError, core.ChatTemplateError):
    """The tokenizer's chat template could not turn the messages into a prompt."""


class QuantizationError(TransformersBackendError, RuntimeError):
    """A quantization stage failed on this model."""


class QuantizationUnavailableError(QuantizationError):
    """A quantization method cannot run on this machine (no CUDA for bitsandbytes, for instance)."""
