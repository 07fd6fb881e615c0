"""``convert_to_gguf``: export a model to GGUF through a registered ``export`` stage named ``gguf``.

No llamatelemetry plugin provides that stage yet: converting a Hugging Face model to GGUF needs
llama.cpp's ``convert_hf_to_gguf.py``. Until a plugin registers
``StageSpec(kind="export", name="gguf", ...)``, ``convert_to_gguf`` raises ``GGUFNotAvailableError``
(a ``NotImplementedError``) saying how to convert with llama.cpp's tools under a traced stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamatelemetry.quantization.stages import GGUFNotAvailableError

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer

__all__ = ["convert_to_gguf", "GGUFNotAvailableError"]


def convert_to_gguf(model: Any, output_path: Any, *, outtype: str = "f16", ctx: PipelineContext | None = None,
                    tracer: PipelineTracer | None = None, **options: Any) -> Any:
    """Write ``model`` (an object or a local folder) to the GGUF file ``output_path`` with the registered stage."""
    from llamatelemetry.quantization.pipeline import find_stage

    stage = find_stage("export", "gguf").load()
    return stage(model, output_path, outtype=outtype, ctx=ctx, tracer=tracer, **options)
