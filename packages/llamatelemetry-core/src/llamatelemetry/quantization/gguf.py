"""``convert_to_gguf``: export a model to GGUF through a registered ``export`` stage named ``gguf``.

The transformers plugin registers that stage (``StageSpec(kind="export", name="gguf", ...)``): it
writes a Hugging Face causal LM (a local folder, or a model object and its tokenizer) to a GGUF
file as ``f32``, ``f16``, ``bf16`` or ``q8_0`` with its own writer on the ``gguf`` package, or
runs llama.cpp's ``convert_hf_to_gguf.py`` when pointed at it (``converter=`` or the
``LLAMATELEMETRY_GGUF_CONVERTER`` environment variable). Without the plugin, ``convert_to_gguf``
raises ``GGUFNotAvailableError`` (a ``NotImplementedError``) with the install command.

The errors an export raises live here so that callers (the CLI, the quantize stage) catch them
without importing a plugin.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from llamatelemetry.errors import LlamaTelemetryError
from llamatelemetry.quantization.stages import GGUFNotAvailableError, QuantizationResult

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer

__all__ = ["convert_to_gguf", "GGUFNotAvailableError", "GGUFExportError", "GGUFWriteError",
           "UnsupportedArchitectureError", "UnsupportedTokenizerError", "GGUF_OUTTYPES"]

#: The output types the export stage writes.
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class GGUFExportError(LlamaTelemetryError, RuntimeError):
    """Writing a model to GGUF failed (the model's files, the tokenizer, or llama.cpp's converter)."""


class GGUFWriteError(LlamaTelemetryError, OSError):
    """Writing the GGUF file failed (a full disk, a file size limit, a read-only folder); nothing is left behind."""

    def __init__(self, path: str, cause: OSError) -> None:
        what = {errno.ENOSPC: "the disk is full: free space there or write the GGUF elsewhere",
                errno.EDQUOT: "the disk quota is used up: free space there or write the GGUF elsewhere",
                errno.EFBIG: "the file is larger than this system lets it grow (ulimit -f, or the filesystem's "
                             "limit): write it elsewhere or raise the limit",
                errno.EROFS: "the folder is on a read-only filesystem: write the GGUF elsewhere"}.get(
            cause.errno or 0, "the disk may be full or the file may not grow there: check free space, file size "
                              "limits (ulimit -f) and that the folder is writable")
        super().__init__(cause.errno or errno.EIO, f"Could not write {path} ({cause.strerror or cause}): {what}.")

    def __str__(self) -> str:
        return str(self.strerror)


class UnsupportedArchitectureError(GGUFExportError, ValueError):
    """The model's architecture is one neither llamatelemetry's GGUF writer nor the configured converter handles."""

    def __init__(self, architecture: str, known: tuple[str, ...], converter_tried: bool = False,
                 converter_output: str | None = None) -> None:
        self.architecture = architecture
        self.known = known
        self.converter_output = converter_output
        said = (f"\nThe converter's output ends:\n{converter_output.strip()}"
                if converter_output and converter_output.strip() else "")
        what = ("llama.cpp's convert_hf_to_gguf.py did not convert it either; check that "
                "the llama.cpp checkout is recent enough to know this architecture" if converter_tried else
                "point llamatelemetry at llama.cpp's own converter, which knows many more: pass "
                "converter='/path/to/llama.cpp' (a checkout, or its convert_hf_to_gguf.py) or set "
                "LLAMATELEMETRY_GGUF_CONVERTER to that path")
        super().__init__(f"GGUF export does not know the architecture {architecture!r} (llamatelemetry's writer "
                         f"handles {', '.join(known)}): {what}.{said}")


class UnsupportedTokenizerError(GGUFExportError, ValueError):
    """The model's tokenizer is of a kind llamatelemetry's GGUF writer cannot write faithfully."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}. Convert this model with llama.cpp's own converter: pass "
                         "converter='/path/to/llama.cpp' or set LLAMATELEMETRY_GGUF_CONVERTER.")


def convert_to_gguf(model: Any, output_path: Any = None, *, outtype: str = "f16",
                    ctx: PipelineContext | None = None, tracer: PipelineTracer | None = None,
                    **options: Any) -> QuantizationResult:
    """Write ``model`` (a local folder, or a model object with ``tokenizer=``) to the GGUF file ``output_path``."""
    from llamatelemetry.quantization.pipeline import find_stage

    stage = find_stage("export", "gguf").load()
    result: QuantizationResult = stage(model, output_path, outtype=outtype, ctx=ctx, tracer=tracer, **options)
    return result
