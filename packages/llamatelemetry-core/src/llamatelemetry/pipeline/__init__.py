"""The fine-tune -> merge -> GGUF -> quantize -> benchmark -> deploy pipeline, traced stage by stage.

``PipelineTracer`` opens one span per stage (``llamatelemetry.pipeline.<stage>``) carrying the
``PipelineContext`` and the artifacts the stage read and wrote; the artifacts also go to the
context's ``ArtifactManifest``, so a run can be verified later. See ``llamatelemetry.pipeline.spans``.
"""

from __future__ import annotations

from llamatelemetry.pipeline.spans import PipelineContext, PipelineStage, PipelineTracer

__all__ = ["PipelineContext", "PipelineStage", "PipelineTracer"]
