"""``QuantizationPipeline``: pick the stage for a quantization type from the plugins' registry, and run it.

The stages come from the plugin manager's ``stages()`` registry (kind ``"quantize"``): the
transformers plugin registers ``dynamic`` (torch int8, CPU) and ``nf4`` (bitsandbytes, CPU or CUDA), the
llama.cpp plugin ``gguf`` (every GGUF type: ``Q4_K_M``, ``Q8_0``, ...; ``method_for`` routes GGUF type
names there). A type no installed plugin produces raises ``StageNotFoundError`` with what to install
or run instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamatelemetry.quantization.stages import (
    STAGE_KIND,
    GGUFNotAvailableError,
    QuantizationResult,
    StageNotFoundError,
    method_for,
)

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer
    from llamatelemetry.plugins.records import StageSpec

__all__ = ["QuantizationPipeline", "available_methods", "find_stage"]

def available_methods() -> list[str]:
    """Names of the installed quantization stages."""
    from llamatelemetry.plugins import get_plugin_manager

    return sorted(spec.name for spec in get_plugin_manager().stages().values() if spec.kind == STAGE_KIND)


def find_stage(kind: str, name: str) -> StageSpec:
    """The registered stage ``kind:name``, or ``StageNotFoundError`` saying how to get it."""
    from llamatelemetry.plugins import get_plugin_manager

    stages = get_plugin_manager().stages()
    spec = stages.get(f"{kind}:{name}")
    if spec is not None:
        return spec
    available = [s.name for s in stages.values() if s.kind == kind]
    from llamatelemetry.plugins.extras import find_feature

    # Which plugin provides a stage comes from the core's packaging metadata, not from this module.
    provider = find_feature(f"stage:{kind}:{name}")
    if name == "gguf" and (provider is None or provider.is_installed()):
        what = "GGUF conversion" if kind == "export" else "GGUF quantization"
        raise GGUFNotAvailableError(kind, name, available, what)
    if provider is not None:
        if not provider.is_installed():
            raise provider.not_installed_error(f"The {name!r} {kind} stage")
        distribution = provider.distribution or provider.module
        raise StageNotFoundError(kind, name, available, hint=(
            f"{distribution} is installed but did not register it: upgrade it (pip install --upgrade "
            f'"{distribution}") or check LLAMATELEMETRY_DISABLE_PLUGINS / LLAMATELEMETRY_PLUGINS.'))
    raise StageNotFoundError(kind, name, available)


class QuantizationPipeline:
    """Quantize a model with the stage that produces ``quant_type``, traced as a pipeline stage.

    Example::

        pipeline = QuantizationPipeline(pipeline_ctx=PipelineContext(base_model="tiny-llama"))
        result = pipeline.run("model-f16.gguf", output_path="model-q4.gguf", quant_type="Q4_K_M")
        print(result.bits_per_weight, result.fallback_tensors)
        pipeline.pipeline_ctx.manifest.save("manifest.json")
    """

    def __init__(self, pipeline_ctx: PipelineContext | None = None, *, tracer: PipelineTracer | None = None) -> None:
        from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer

        self.pipeline_ctx = pipeline_ctx if pipeline_ctx is not None else PipelineContext()
        self.tracer = tracer if tracer is not None else PipelineTracer()

    def available_methods(self) -> list[str]:
        """Names of the installed quantization stages."""
        return available_methods()

    def run(self, model: Any, output_path: Any = None, quant_type: str | None = None, *, method: str | None = None,
            **options: Any) -> QuantizationResult:
        """Quantize ``model`` (an object or a local folder) to ``quant_type``; ``method`` picks the stage by name."""
        if quant_type is None and method is None:
            raise ValueError("QuantizationPipeline.run needs quant_type= ('int8', 'nf4', or a GGUF type such as "
                             f"'Q4_K_M') or method= (installed: {', '.join(available_methods()) or 'none'}).")
        chosen = method or method_for(quant_type or "")
        if chosen is None:
            raise ValueError(f"quant_type={quant_type!r} is not a type any stage is known to produce: use "
                             "'int8' (torch dynamic, CPU), 'nf4' (bitsandbytes, CPU or CUDA), a GGUF type such as "
                             "'Q4_K_M', or "
                             f"name the stage with method= (installed: {', '.join(available_methods()) or 'none'}).")
        stage = find_stage(STAGE_KIND, chosen).load()
        if self.pipeline_ctx.quantization is None and quant_type is not None:
            self.pipeline_ctx.quantization = quant_type
        result: QuantizationResult = stage(model, output_path, quant_type=quant_type, ctx=self.pipeline_ctx,
                                           tracer=self.tracer, **options)
        return result
