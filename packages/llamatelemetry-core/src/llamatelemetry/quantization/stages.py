"""What every quantization stage shares: the result record, the stage contract, the errors, the method table.

A stage is a callable a plugin registers with ``llamatelemetry_register_stages`` as
``StageSpec(kind="quantize", name=<method>, factory=...)``. It opens its own pipeline span
(``PipelineTracer.span_quantize``), records what it read and wrote in the context's manifest, and
returns a ``QuantizationResult``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from llamatelemetry.errors import LlamaTelemetryError

if TYPE_CHECKING:
    from llamatelemetry.artifacts import Artifact
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer

__all__ = [
    "STAGE_KIND",
    "QuantizationResult",
    "QuantizationStage",
    "StageNotFoundError",
    "GGUFNotAvailableError",
    "method_for",
    "is_gguf_type",
]

#: The ``StageSpec.kind`` of quantization stages.
STAGE_KIND: Final = "quantize"

# quant_type (lowercase) -> the stage (method) that produces it.
_METHODS: Final = {
    "int8": "dynamic", "qint8": "dynamic", "dynamic": "dynamic", "dynamic_int8": "dynamic",
    "float16": "dynamic", "fp16": "dynamic",
    "nf4": "nf4", "fp4": "nf4", "bnb_nf4": "nf4", "bnb_fp4": "nf4",
}
# llama.cpp's GGUF file types: Q4_K_M, Q8_0, IQ3_XXS, TQ1_0, F16, BF16, F32, ...
_GGUF_TYPE: Final = re.compile(r"^(?:I?Q\d(?:_[0-9A-Z]+)*|TQ\d_\d|F16|BF16|F32)$", re.IGNORECASE)


def is_gguf_type(quant_type: str) -> bool:
    """Whether ``quant_type`` names a llama.cpp GGUF quantization (``Q4_K_M``, ``Q8_0``, ``F16``, ...)."""
    return bool(_GGUF_TYPE.match(quant_type.strip()))


def method_for(quant_type: str) -> str | None:
    """The stage that produces ``quant_type``: ``dynamic`` (int8), ``nf4`` (4-bit), ``gguf``; ``None`` if unknown."""
    key = quant_type.strip().lower()
    if key in _METHODS:
        return _METHODS[key]
    return "gguf" if is_gguf_type(quant_type) else None


@attrs.frozen
class QuantizationResult:
    """What a quantization stage produced.

    ``model`` is the quantized model object when the stage made one in memory (``None`` when the
    product is only a file); sizes are bytes of the weights before and after, where known.
    File-producing stages (GGUF) also say which quantizer ran (``engine``), the bits per weight,
    the output's tensors by type, and which weights had to fall back to another type because their
    shape does not fit the asked one (``fallback_tensors``: never hidden).
    """

    method: str
    quant_type: str
    model: Any = None
    output_path: str | None = None
    size_before_bytes: int | None = None
    size_after_bytes: int | None = None
    duration_s: float | None = None
    artifacts: tuple[Artifact, ...] = ()
    context: PipelineContext | None = None
    engine: str | None = None
    bits_per_weight: float | None = None
    #: Tensors of the output by type name (``{"Q4_K": 13, "Q6_K": 3, "F32": 5}``).
    tensor_types: Mapping[str, int] = attrs.field(factory=dict)
    #: Names of the weights stored in a fallback type (their rows do not fit the asked type's blocks).
    fallback_tensors: tuple[str, ...] = ()
    #: The file the stage quantized from when it exported one first (removed unless kept).
    intermediate_path: str | None = None

    @property
    def n_tensors(self) -> int:
        """Tensors in the output (0 when the stage did not count them)."""
        return sum(self.tensor_types.values())

    @property
    def fallback_count(self) -> int:
        """How many weights fell back to another type than the asked one."""
        return len(self.fallback_tensors)

    @property
    def compression_ratio(self) -> float | None:
        """Size before divided by size after (``None`` when either is unknown)."""
        if not self.size_before_bytes or not self.size_after_bytes:
            return None
        return self.size_before_bytes / self.size_after_bytes


class QuantizationStage(Protocol):
    """The callable a ``quantize`` stage registers.

    ``model`` is a model object or a local folder; ``output_path`` where to write the product
    (``None``: keep it in memory only); ``ctx`` the pipeline context whose manifest gets the
    artifacts; ``tracer`` the ``PipelineTracer`` to open the stage span with.
    """

    def __call__(self, model: Any, output_path: Any = None, *, quant_type: str | None = None,
                 ctx: PipelineContext | None = None, tracer: PipelineTracer | None = None,
                 **options: Any) -> QuantizationResult:
        """Quantize ``model`` and return what was produced."""
        ...


class StageNotFoundError(LlamaTelemetryError, LookupError):
    """No installed plugin registers the stage asked for."""

    def __init__(self, kind: str, name: str, available: Sequence[str], hint: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.available = list(available)
        listing = ", ".join(sorted(available)) or "none"
        advice = hint or ("A plugin provides a stage through the 'llamatelemetry' entry-point group "
                          "(hook llamatelemetry_register_stages).")
        super().__init__(f"No installed plugin provides the {kind} stage {name!r} (installed {kind} stages: "
                         f"{listing}). {advice}")


class GGUFNotAvailableError(StageNotFoundError, NotImplementedError):
    """GGUF conversion or GGUF quantization was asked for, and no installed plugin provides it."""

    def __init__(self, kind: str, name: str, available: Sequence[str], what: str) -> None:
        from llamatelemetry.plugins.extras import find_feature

        # Which plugins provide GGUF stages, and which quantizes without llama.cpp, is data in the core's
        # packaging metadata.
        provider = find_feature(f"stage:{kind}:{name}")
        fallback = find_feature("stage:quantize:dynamic")
        install = f": {fallback.install_command}" if fallback is not None else ""
        plugin = (f"install the plugin that provides it ({provider.install_command}) or check "
                  "LLAMATELEMETRY_DISABLE_PLUGINS / LLAMATELEMETRY_PLUGINS; or "
                  if provider is not None else "")
        super().__init__(kind, name, available, hint=(
            f"{what} is a plugin stage: {plugin}convert the model with llama.cpp's convert_hf_to_gguf.py (python "
            "convert_hf_to_gguf.py <model folder> --outtype f16), then quantize it with llama-quantize "
            "(llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M), each inside a PipelineTracer stage "
            "(span_export_gguf, span_quantize) to trace it. For quantization without llama.cpp, "
            "quant_type='int8' (torch, CPU) or quant_type='nf4' (bitsandbytes, CPU or CUDA) run through the "
            f"plugin's quantize stages{install}."))
