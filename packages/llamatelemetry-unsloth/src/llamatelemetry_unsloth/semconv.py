"""Names the Unsloth plugin emits: fine-tuning spans, events, attributes and metrics (``llamatelemetry.train.*``).

The GenAI conventions have no names for model loading, adapters or training runs: these are ours,
each listed in docs/reference/telemetry.md with its type and unit.
"""

from __future__ import annotations

from typing import Final

# ---- spans
SPAN_MODEL_LOAD: Final = "llamatelemetry.train.model_load"
SPAN_ADAPTER_ATTACH: Final = "llamatelemetry.train.adapter_attach"
SPAN_TRAIN: Final = "llamatelemetry.train"
SPAN_MERGE: Final = "llamatelemetry.train.merge"
SPAN_SAVE: Final = "llamatelemetry.train.save"

# ---- events (one per logging step of Trainer.train)
EVENT_LOG_STEP: Final = "llamatelemetry.train.log_step"

# ---- model load
MODEL: Final = "llamatelemetry.train.model"  # string: a display name, never a full local path
MODEL_DTYPE: Final = "llamatelemetry.train.model.dtype"  # string: "float32", "bfloat16"
MODEL_LOAD_IN_4BIT: Final = "llamatelemetry.train.model.load_in_4bit"  # bool
MODEL_PARAMETERS: Final = "llamatelemetry.train.model.parameters"  # int
MODEL_SIZE: Final = "llamatelemetry.train.model.size"  # By: parameters and buffers in memory
MODEL_LOAD_DURATION: Final = "llamatelemetry.train.model.load_duration"  # s
#: Peak memory after the load: CUDA bytes allocated (peak since the load began) or the process's peak RSS.
MEMORY_PEAK: Final = "llamatelemetry.train.memory.peak"  # By
MEMORY_PEAK_KIND: Final = "llamatelemetry.train.memory.peak.kind"  # "cuda_allocated" | "process_rss"
#: Who loaded the model: "unsloth" (FastLanguageModel) or "transformers" (from_pretrained).
LOADER: Final = "llamatelemetry.train.loader"

# ---- LoRA adapter
ADAPTER_NAME: Final = "llamatelemetry.train.adapter.name"
ADAPTER_TYPE: Final = "llamatelemetry.train.adapter.type"  # "LORA", ...
LORA_RANK: Final = "llamatelemetry.train.lora.rank"  # int
LORA_ALPHA: Final = "llamatelemetry.train.lora.alpha"  # double
LORA_DROPOUT: Final = "llamatelemetry.train.lora.dropout"  # double
LORA_TARGET_MODULES: Final = "llamatelemetry.train.lora.target_modules"  # string[]
TRAINABLE_PARAMETERS: Final = "llamatelemetry.train.parameters.trainable"  # int
TOTAL_PARAMETERS: Final = "llamatelemetry.train.parameters.total"  # int

# ---- a training run (Trainer.train, SFTTrainer.train)
TRAINER: Final = "llamatelemetry.train.trainer"  # class name: "Trainer", "SFTTrainer"
MAX_STEPS: Final = "llamatelemetry.train.max_steps"
BATCH_SIZE: Final = "llamatelemetry.train.batch_size"  # per device
GRADIENT_ACCUMULATION: Final = "llamatelemetry.train.gradient_accumulation_steps"
STEP: Final = "llamatelemetry.train.step"  # int: the global step at a log, or at the end
EPOCH: Final = "llamatelemetry.train.epoch"  # double
LOSS: Final = "llamatelemetry.train.loss"  # double: the loss of a logging window; the run's mean at the end
LEARNING_RATE: Final = "llamatelemetry.train.learning_rate"  # double
GRAD_NORM: Final = "llamatelemetry.train.grad_norm"  # double
TOKENS_PER_SECOND: Final = "llamatelemetry.train.tokens_per_second"  # {token}/s over the logging window
TOKENS: Final = "llamatelemetry.train.tokens"  # int: tokens the run trained on (non-padding input tokens)
RUNTIME: Final = "llamatelemetry.train.runtime"  # s, as Trainer reports it
#: ``ok`` or ``error``: the metric attribute of the train duration saying how the call ended.
OUTCOME: Final = "llamatelemetry.train.outcome"

# ---- merge and save
MERGE_METHOD: Final = "llamatelemetry.train.merge.method"  # "merged_16bit"
#: Set when a 4-bit base could not be merged in place and was reloaded unquantized to merge (CPU).
MERGE_RELOADED_BASE: Final = "llamatelemetry.train.merge.reloaded_base"  # bool
MERGE_DTYPE: Final = "llamatelemetry.train.merge.dtype"
MERGED_MODULES: Final = "llamatelemetry.train.merge.modules"  # int: LoRA layers merged
SAVE_PATH: Final = "llamatelemetry.train.save.path"  # string: the folder written
SAVE_KIND: Final = "llamatelemetry.train.save.kind"  # "adapter" | "model"
SAVE_SIZE: Final = "llamatelemetry.train.save.size"  # By written

# ---- metrics
METRIC_STEPS: Final = "llamatelemetry.train.steps"  # {step}, counter
# The gauges and the token counter share their attribute's name: the same figure, as a metric.
METRIC_TOKENS: Final = TOKENS  # {token}, counter
METRIC_LOSS: Final = LOSS  # 1, gauge: the loss at each log
METRIC_LEARNING_RATE: Final = LEARNING_RATE  # 1, gauge
METRIC_GRAD_NORM: Final = GRAD_NORM  # 1, gauge
METRIC_THROUGHPUT: Final = "llamatelemetry.train.throughput"  # {token}/s, gauge
METRIC_DURATION: Final = "llamatelemetry.train.duration"  # s, histogram: one train() call
METRIC_MODEL_LOAD_DURATION: Final = "llamatelemetry.train.model_load.duration"  # s, histogram

# ---- pipeline summaries on the benchmark and deploy stage spans
BENCH_TTFT_P50: Final = "llamatelemetry.pipeline.benchmark.ttft_ms.p50"  # ms
BENCH_TTFT_P90: Final = "llamatelemetry.pipeline.benchmark.ttft_ms.p90"  # ms
BENCH_OUTPUT_TPS: Final = "llamatelemetry.pipeline.benchmark.output_tokens_per_s"  # {token}/s
BENCH_REQUESTS: Final = "llamatelemetry.pipeline.benchmark.requests"  # int: completed
BENCH_FAILED: Final = "llamatelemetry.pipeline.benchmark.failed"  # int
DEPLOY_URL: Final = "llamatelemetry.pipeline.deploy.url"
DEPLOY_SERVER_KIND: Final = "llamatelemetry.pipeline.deploy.server_kind"
DEPLOY_HEALTH: Final = "llamatelemetry.pipeline.deploy.health"  # "ok" | "failed"
DEPLOY_HEALTH_DURATION: Final = "llamatelemetry.pipeline.deploy.health.duration"  # s until /health said 200
