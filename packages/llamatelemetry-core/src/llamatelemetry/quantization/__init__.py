"""Quantization, traced: ``QuantizationPipeline`` runs the stage that produces a quantization type.

Stages come from plugins (hook ``llamatelemetry_register_stages``, kind ``"quantize"``);
``llamatelemetry.quantization.dynamic.quantize_dynamic`` (torch int8) and
``llamatelemetry.quantization.nf4.quantize_nf4`` (bitsandbytes 4-bit) are the transformers
plugin's, resolved lazily; ``llamatelemetry.quantization.gguf.convert_to_gguf`` runs a
registered GGUF export stage. GGUF types (``Q4_K_M``, ``Q8_0``, ...) go to the llama.cpp plugin's
``gguf`` stage (llama.cpp's quantizer, in-process). Every stage is a ``llamatelemetry.pipeline.quantize``
span whose input and output files go to the pipeline context's ``ArtifactManifest``.
"""

from __future__ import annotations

from llamatelemetry.quantization.pipeline import QuantizationPipeline, available_methods, find_stage
from llamatelemetry.quantization.stages import (
    STAGE_KIND,
    GGUFNotAvailableError,
    QuantizationResult,
    QuantizationStage,
    StageNotFoundError,
    is_gguf_type,
    method_for,
)

__all__ = [
    "STAGE_KIND",
    "GGUFNotAvailableError",
    "QuantizationPipeline",
    "QuantizationResult",
    "QuantizationStage",
    "StageNotFoundError",
    "available_methods",
    "find_stage",
    "is_gguf_type",
    "method_for",
]
