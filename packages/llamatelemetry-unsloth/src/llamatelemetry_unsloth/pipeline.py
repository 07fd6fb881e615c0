"""``run_pipeline``: fine-tune -> merge -> GGUF -> quantize -> benchmark -> deploy, as one trace.

One ``llamatelemetry.pipeline`` span holds the six stage spans (``PipelineTracer``), and every
stage records what it read and wrote in the context's ``ArtifactManifest`` (sha256, size), saved
as ``manifest.json`` under the pipeline id:

- ``finetune``: LoRA on the model (peft, transformers ``Trainer``; traced by the plugin's
  instrumentation: model load, adapter attach, ``llamatelemetry.train`` with a log-step event per log);
  the adapter files are its artifacts;
- ``merge_lora``: ``merge_lora_adapters`` (16-bit), the merged model saved;
- ``export_gguf`` and ``quantize``: ``export_to_llamatelemetry`` (F16 GGUF, then ``quant_type``);
- ``benchmark``: the core's bench harness (``BenchmarkRunner``, the llama.cpp load driver starting a
  server on the quantized file) with its summary (TTFT, tokens/s) on the span and its report saved;
- ``deploy``: ``ServerManager`` starts a llama.cpp server on the result; the health check and a
  first generation (the model's continuation of ``prompt``) are part of the span.

Without ``model_dir`` a tiny Llama is built in code (tokenizer trained on the spot), so the whole
run is offline; it learns ``sentence`` and the deployed server says it back.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth._deps import import_engine
from llamatelemetry_unsloth.api import _f16_path, check_model_folder, export_to_llamatelemetry, merge_lora_adapters
from llamatelemetry_unsloth.testing import PROMPT, SENTENCE

if TYPE_CHECKING:
    from llamatelemetry.bench import BenchmarkReport
    from llamatelemetry.pipeline import PipelineContext, PipelineStage, PipelineTracer

__all__ = ["PipelineRun", "run_pipeline", "LORA_TARGETS"]

log = logging.getLogger("llamatelemetry.unsloth")

#: Every projection of a Llama block: what Unsloth's notebooks attach LoRA to.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@attrs.frozen
class PipelineRun:
    """What a pipeline run produced: the context (id, manifest), the files, the figures and the generated text."""

    context: PipelineContext
    workdir: Path
    manifest_path: Path
    adapter_dir: Path
    merged_dir: Path
    gguf_path: Path
    final_loss: float | None
    benchmark: BenchmarkReport | None
    server_url: str | None
    prompt: str
    generated_text: str
    #: The stages' wall-clock durations, in run order.
    durations_s: dict[str, float] = attrs.field(factory=dict)


def _finetune(stage: PipelineStage, workdir: Path, model_dir: Path | None, sentence: str, steps: int,
              learning_rate: float, lora_rank: int, seed: int) -> tuple[Any, Any, float | None, Path]:
    torch = import_engine("torch", "run_pipeline")
    transformers = import_engine("transformers", "run_pipeline")
    peft = import_engine("peft", "run_pipeline")
    if model_dir is None:
        from llamatelemetry_unsloth.testing import write_model

        model_dir = write_model(workdir / "base", seed=seed)
    for path in sorted(model_dir.iterdir()):
        if path.suffix in (".safetensors", ".bin"):
            stage.add_input(path, "model_weights")
        elif path.name == "config.json":
            stage.add_input(path, "model_config")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True,
                                                              dtype=torch.float32)
    torch.manual_seed(seed)  # LoRA's initial weights, so a run is repeatable
    targets = [t for t in LORA_TARGETS if any(name.endswith(t) for name, _ in model.named_modules())]
    config = peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                             target_modules=targets or "all-linear", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    encoded = tokenizer(f"{sentence}{tokenizer.eos_token}", return_tensors="pt")
    example = {"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
               "labels": encoded["input_ids"][0].clone()}

    class _Repeat(torch.utils.data.Dataset):  # type: ignore[misc,name-defined]
        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int) -> dict[str, Any]:
            return example

    args = transformers.TrainingArguments(
        output_dir=str(workdir / "trainer"), max_steps=steps, per_device_train_batch_size=1,
        learning_rate=learning_rate, lr_scheduler_type="constant", logging_steps=max(1, steps // 6),
        save_strategy="no", report_to=[], seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available())
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Repeat())
    trainer.remove_callback(transformers.PrinterCallback)  # the log lines are on the span as events instead
    result = trainer.train()
    loss = float(result.training_loss) if result.training_loss is not None else None
    adapter_dir = workdir / "adapter"
    model.save_pretrained(adapter_dir)
    for path in sorted(adapter_dir.iterdir()):
        if path.suffix in (".safetensors", ".bin"):
            stage.add_output(path, "lora_adapter")
        elif path.name == "adapter_config.json":
            stage.add_output(path, "lora_config")
    stage.set_attributes({names.STEP: steps, **({names.LOSS: loss} if loss is not None else {})})
    return model, tokenizer, loss, adapter_dir


def _read(stage: PipelineStage, path: Path, kind: str) -> None:
    """Record ``path`` as the stage's input; a file an earlier stage wrote keeps that stage's manifest record."""
    recorded = stage.context.manifest.get(path)
    if recorded is None:
        stage.add_input(path, kind)
    else:
        stage.inputs.append(recorded)


def _benchmark(stage: PipelineStage, workdir: Path, gguf: Path, prompt: str, requests: int, tokens: int,
               gpu_layers: int, threads: int) -> BenchmarkReport:
    from llamatelemetry.bench import BenchmarkRunner

    runner = BenchmarkRunner("llama.cpp", gpu_monitor=None, driver_options={
        "model": os.fspath(gguf), "gpu_layers": gpu_layers, "threads": threads, "ctx_size": 512})
    report = runner.run(prompts=[prompt], n_tokens=tokens, num_requests=requests, warmup=1, concurrency=1,
                        operation="text_completion", name="pipeline benchmark", seed=0)
    summary = report.tests[0].summary
    attributes: dict[str, Any] = {names.BENCH_REQUESTS: summary.completed, names.BENCH_FAILED: summary.failed}
    ttft = summary.metrics.get("ttft_ms")
    if ttft is not None and ttft.count:
        attributes[names.BENCH_TTFT_P50] = ttft.p50
        attributes[names.BENCH_TTFT_P90] = ttft.p90
    if summary.output_tokens_per_s is not None:
        attributes[names.BENCH_OUTPUT_TPS] = summary.output_tokens_per_s
    stage.set_attributes(attributes)
    _read(stage, gguf, "gguf_model")
    saved = report.save(workdir / "benchmark.json")
    stage.add_output(saved, "benchmark_report")
    if summary.failed:
        raise RuntimeError(f"The benchmark of {gguf.name} had {summary.failed} failed requests "
                           f"({dict(summary.errors)}); see {saved}.")
    return report


def _deploy(stage: PipelineStage, workdir: Path, gguf: Path, prompt: str, max_tokens: int, gpu_layers: int,
            threads: int) -> tuple[Any, str]:
    from llamatelemetry.inference import InferenceRequest, SamplingParams, create_engine

    # The llama.cpp plugin's server manager, through the core's name for it (a plugin imports no other plugin).
    llama = importlib.import_module("llamatelemetry.llama")
    _read(stage, gguf, "gguf_model")
    server = llama.ServerManager(log_dir=workdir)
    started = time.perf_counter()
    server.start_server(gguf, gpu_layers=gpu_layers, port=None, ctx_size=512, threads=threads)
    try:
        healthy = server.is_running()  # start_server waited for /health; this is the deployed server's own check
        stage.set_attributes({names.DEPLOY_URL: server.base_url, names.DEPLOY_SERVER_KIND: server.kind or "unknown",
                              names.DEPLOY_HEALTH: "ok" if healthy else "failed",
                              names.DEPLOY_HEALTH_DURATION: time.perf_counter() - started})
        if not healthy:
            raise RuntimeError(f"The llama.cpp server on {gguf.name} did not pass its health check.\n"
                               f"{server.log_tail()}")
        with create_engine("llama.cpp", llama_server_url=server.base_url) as engine:
            result = engine.generate(InferenceRequest(
                messages=[{"role": "user", "content": prompt}], operation="text_completion",
                max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0, seed=0)))
    except BaseException:
        server.stop_server()
        raise
    return server, result.text


def run_pipeline(workdir: str | os.PathLike[str], *, model_dir: str | os.PathLike[str] | None = None,
                 sentence: str = SENTENCE, prompt: str = PROMPT, steps: int = 30, learning_rate: float = 5e-3,
                 lora_rank: int = 8, quant_type: str = "Q4_K_M", bench_requests: int = 3, bench_tokens: int = 12,
                 max_tokens: int = 16, gpu_layers: int = 0, threads: int = 1, seed: int = 0,
                 ctx: PipelineContext | None = None, tracer: PipelineTracer | None = None,
                 keep_server: bool = False, on_stage: Callable[[str], None] | None = None) -> PipelineRun:
    """Run the six stages in one trace; returns what they produced (the server is stopped unless ``keep_server``).

    ``workdir`` receives every file (base model when built here, adapter, merged model, GGUFs,
    benchmark report, manifest). ``model_dir`` is your own saved Hugging Face model; without it a
    tiny Llama is built here and taught ``sentence``. ``gpu_layers``/``threads`` go to the llama.cpp
    servers of the benchmark and the deployment.
    """
    from llamatelemetry.pipeline import PipelineContext, PipelineTracer

    work = Path(workdir).expanduser().resolve()
    tracer = tracer if tracer is not None else PipelineTracer()
    source = Path(model_dir).expanduser() if model_dir is not None else None
    context = ctx if ctx is not None else PipelineContext(
        base_model=source.name if source is not None else "tiny-llama-256", quantization=quant_type)
    durations: dict[str, float] = {}

    def timed(name: str) -> float:
        if on_stage is not None:
            on_stage(name)
        return time.perf_counter()

    server: Any = None
    try:
        with tracer.pipeline(context):
            began = timed("finetune")
            with tracer.span_finetune(context) as stage:
                if source is not None:
                    check_model_folder(source)
                work.mkdir(parents=True, exist_ok=True)
                model, tokenizer, loss, adapter_dir = _finetune(stage, work, source, sentence, steps, learning_rate,
                                                                lora_rank, seed)
            context.adapter = adapter_dir.name
            durations["finetune"] = time.perf_counter() - began
            began = timed("merge_lora")
            merged_dir = work / "merged"
            merged = merge_lora_adapters(model, ctx=context, tracer=tracer, save_path=merged_dir)
            tokenizer.save_pretrained(merged_dir)
            durations["merge_lora"] = time.perf_counter() - began
            began = timed("export_gguf")
            output = work / f"model-{quant_type.lower()}.gguf"
            # The F16 of an earlier run in this workdir is this pipeline's own product, not a user's file.
            _f16_path(output).unlink(missing_ok=True)
            gguf = Path(export_to_llamatelemetry(model=merged, tokenizer=tokenizer, output_path=output,
                                                 pipeline_ctx=context, quant_type=quant_type, tracer=tracer))
            durations["export_gguf+quantize"] = time.perf_counter() - began
            began = timed("benchmark")
            with tracer.span_benchmark(context) as stage:
                report = _benchmark(stage, work, gguf, prompt, bench_requests, bench_tokens, gpu_layers, threads)
            durations["benchmark"] = time.perf_counter() - began
            began = timed("deploy")
            with tracer.span_deploy(context) as stage:
                server, text = _deploy(stage, work, gguf, prompt, max_tokens, gpu_layers, threads)
            durations["deploy"] = time.perf_counter() - began
            manifest = context.manifest.save(work / "manifest.json")
    except BaseException:
        if server is not None:  # a failure after the deployment (the manifest, the span) stops its server
            server.stop_server()
        raise
    url = server.base_url
    if not keep_server:
        server.stop_server()
    return PipelineRun(context=context, workdir=work, manifest_path=manifest, adapter_dir=adapter_dir,
                       merged_dir=merged_dir, gguf_path=gguf, final_loss=loss, benchmark=report,
                       server_url=url if keep_server else None, prompt=prompt, generated_text=text,
                       durations_s=durations)
