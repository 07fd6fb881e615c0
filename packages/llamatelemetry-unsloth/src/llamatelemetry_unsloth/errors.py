"""The Unsloth plugin's errors; each message says what to do next."""

from __future__ import annotations

import os

from llamatelemetry.errors import LlamaTelemetryError, ModelNotFoundError

__all__ = [
    "UnslothPluginError",
    "EngineNotInstalledError",
    "UnslothNotInstalledError",
    "ModelFolderNotFoundError",
    "NoLoraAdaptersError",
    "AdaptersNotMergedError",
    "OutputPathError",
    "UnknownQuantTypeError",
]

#: What installs the fine-tuning libraries the plain PEFT/transformers path needs.
ENGINE_INSTALL = 'pip install "llamatelemetry-unsloth[engine]"'
#: What installs Unsloth itself (its own transformers/TRL range: best in its own environment).
UNSLOTH_INSTALL = 'pip install "llamatelemetry-unsloth[unsloth]"'


class UnslothPluginError(LlamaTelemetryError):
    """Base class of the Unsloth plugin's errors."""


class EngineNotInstalledError(UnslothPluginError, ImportError):
    """torch, transformers or peft, which a feature needs, is not installed."""

    def __init__(self, library: str, feature: str) -> None:
        self.library = library
        self.install_command = ENGINE_INSTALL
        super().__init__(f"{feature} needs {library}, which is not installed. Install it with: {ENGINE_INSTALL}",
                         name=library)


class UnslothNotInstalledError(UnslothPluginError, ImportError):
    """Unsloth is not installed (or cannot be imported); only the Unsloth-specific paths need it."""

    def __init__(self, feature: str, cause: BaseException | None = None) -> None:
        self.install_command = UNSLOTH_INSTALL
        detail = ""
        if cause is not None and not isinstance(cause, ModuleNotFoundError):
            detail = f" (import unsloth failed: {type(cause).__name__}: {cause})"
            if "torchvision" in str(cause):
                detail += ("; a torchvision built for another torch breaks it: pip uninstall -y torchvision "
                           "(Unsloth does not need it for text models)")
        super().__init__(f"{feature} runs through Unsloth's FastLanguageModel, which is not available{detail}. "
                         f"Install it with: {UNSLOTH_INSTALL} (it pins its own transformers and TRL range, so use "
                         "a separate environment). Without Unsloth, load the model with transformers and attach "
                         "LoRA with peft.get_peft_model: the plugin traces that path too.", name="unsloth")


class ModelFolderNotFoundError(ModelNotFoundError, UnslothPluginError):
    """A model folder given to the pipeline does not exist or is not a saved model."""

    def __init__(self, path: str | os.PathLike[str], reason: str = "no such folder") -> None:
        self.path = os.fspath(path)
        super().__init__(f"Model folder {self.path!r} cannot be used: {reason}. Pass a folder written by "
                         "model.save_pretrained(folder) and tokenizer.save_pretrained(folder) (with config.json).")


class NoLoraAdaptersError(UnslothPluginError, ValueError):
    """``merge_lora_adapters`` was given a model with no LoRA adapters to merge."""

    def __init__(self, model: object) -> None:
        super().__init__(f"merge_lora_adapters got a {type(model).__name__} with no LoRA adapters, so there is nothing "
                         "to merge. Attach adapters first (FastLanguageModel.get_peft_model or peft.get_peft_model) "
                         "and train them, or load a saved adapter with PeftModel.from_pretrained(base, adapter_dir); "
                         "a model without adapters can go straight to export_to_llamatelemetry.")


class AdaptersNotMergedError(UnslothPluginError, ValueError):
    """``export_to_llamatelemetry`` was given a model whose LoRA adapters are still separate."""

    def __init__(self) -> None:
        super().__init__("export_to_llamatelemetry got a model whose LoRA adapters are not merged: merge them first "
                         "with merge_lora_adapters(model, ctx=pipeline_ctx) and export the model it returns.")


class OutputPathError(UnslothPluginError, OSError):
    """The output path cannot be written: its folder is missing or read-only, or it is not a file path."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"Cannot write {self.path!r}: {reason}.")


class UnknownQuantTypeError(UnslothPluginError, ValueError):
    """The quantization type is not a llama.cpp GGUF type."""

    def __init__(self, quant_type: object) -> None:
        self.quant_type = quant_type
        super().__init__(f"quant_type={quant_type!r} is not a llama.cpp GGUF type: use one such as 'Q4_K_M', "
                         "'Q5_K_M', 'Q8_0', 'Q4_0' or 'F16' (K-quants need weight rows divisible by 256; llama.cpp "
                         "falls back to another type otherwise).")
