"""Names the pipeline tracer and the quantization stages emit, under the ``llamatelemetry.*`` namespace.

The GenAI conventions have no names for fine-tune / merge / export / quantize / deploy pipelines:
these are ours, each listed with its type and unit.
"""

from __future__ import annotations

from typing import Final

#: Span names are this prefix plus the stage: ``llamatelemetry.pipeline.quantize``.
SPAN_PREFIX: Final = "llamatelemetry.pipeline."
#: The span of a whole run (``PipelineTracer.pipeline``): every stage span of the run is its child.
SPAN_PIPELINE: Final = "llamatelemetry.pipeline"
#: Artifacts in the run's manifest when the pipeline span ends (int).
ARTIFACT_COUNT: Final = "llamatelemetry.pipeline.artifacts.count"
STAGE_FINETUNE: Final = "finetune"
STAGE_MERGE_LORA: Final = "merge_lora"
STAGE_EXPORT_GGUF: Final = "export_gguf"
STAGE_QUANTIZE: Final = "quantize"
STAGE_BENCHMARK: Final = "benchmark"
STAGE_DEPLOY: Final = "deploy"

# ---- the pipeline context (every stage span)
PIPELINE_ID: Final = "llamatelemetry.pipeline.id"
STAGE: Final = "llamatelemetry.pipeline.stage"
BASE_MODEL: Final = "llamatelemetry.pipeline.base_model"
ADAPTER: Final = "llamatelemetry.pipeline.adapter"
QUANTIZATION: Final = "llamatelemetry.pipeline.quantization"
OUTPUT_ARTIFACT: Final = "llamatelemetry.pipeline.output_artifact"

# ---- artifacts a stage read and wrote (also recorded in the context's ArtifactManifest)
INPUT_ARTIFACTS: Final = "llamatelemetry.pipeline.artifacts.input"  # string[], paths
OUTPUT_ARTIFACTS: Final = "llamatelemetry.pipeline.artifacts.output"  # string[], paths
INPUT_ARTIFACTS_SIZE: Final = "llamatelemetry.pipeline.artifacts.input.size"  # By, summed
OUTPUT_ARTIFACTS_SIZE: Final = "llamatelemetry.pipeline.artifacts.output.size"  # By, summed

# ---- quantization stages
QUANTIZATION_METHOD: Final = "llamatelemetry.quantization.method"  # "dynamic", "nf4", ...
QUANTIZATION_TYPE: Final = "llamatelemetry.quantization.type"  # "qint8", "nf4", "Q4_K_M", ...
#: Bytes of the model's parameters and buffers in memory, before and after quantization.
QUANTIZATION_SIZE_BEFORE: Final = "llamatelemetry.quantization.size.before"  # By
QUANTIZATION_SIZE_AFTER: Final = "llamatelemetry.quantization.size.after"  # By
#: Modules the stage replaced by quantized ones.
QUANTIZATION_MODULES: Final = "llamatelemetry.quantization.modules"
#: Weight layers the stage could not quantize and left as they were (GPT-2's Conv1D for torch dynamic int8).
QUANTIZATION_MODULES_SKIPPED: Final = "llamatelemetry.quantization.modules.skipped"
#: Which quantizer ran: ``llama.cpp`` (llama_model_quantize) or ``gguf-py`` (the gguf package's Python quantizers).
QUANTIZATION_ENGINE: Final = "llamatelemetry.quantization.engine"
#: The GGUF ``general.file_type`` of the input and of the output, as llama.cpp names them (``F16``, ``Q4_K_M``).
QUANTIZATION_SOURCE_TYPE: Final = "llamatelemetry.quantization.source_type"
QUANTIZATION_FILE_TYPE: Final = "llamatelemetry.quantization.file_type"
#: Bits per weight of the output: bytes of all its tensors x 8 / their elements (llama.cpp's "BPW").
QUANTIZATION_BITS_PER_WEIGHT: Final = "llamatelemetry.quantization.bits_per_weight"  # double
QUANTIZATION_TENSORS: Final = "llamatelemetry.quantization.tensors"  # int, tensors in the output
#: Tensors of the output by ggml type, one ``TYPE=count`` string each: ``["F32=5", "Q4_K=13", "Q6_K=3"]``.
QUANTIZATION_TENSOR_TYPES: Final = "llamatelemetry.quantization.tensor_types"  # string[]
#: Weights stored in another type than the asked one uses because their rows do not fit its blocks
#: (K-quants need rows divisible by 256): their count, and their names (at most 64 on the span).
QUANTIZATION_FALLBACK_TENSORS: Final = "llamatelemetry.quantization.fallback.tensors"  # int
QUANTIZATION_FALLBACK_NAMES: Final = "llamatelemetry.quantization.fallback.names"  # string[]
#: Seconds the quantizer itself ran (the stage span also covers reading, checking and hashing).
QUANTIZATION_DURATION: Final = "llamatelemetry.quantization.duration"  # s

# ---- metrics
METRIC_STAGE_DURATION: Final = "llamatelemetry.pipeline.stage.duration"  # s, histogram, by stage and outcome
#: ``ok`` or ``error``: the metric attribute saying how a stage ended.
OUTCOME: Final = "llamatelemetry.pipeline.outcome"
