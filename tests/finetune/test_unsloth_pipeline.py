"""The whole pipeline as one trace, on a tiny Llama built here: fine-tune, merge, GGUF, Q4_K_M, benchmark, deploy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamatelemetry.artifacts import ArtifactManifest
from llamatelemetry.pipeline import attributes as pnames
from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth.testing import PROMPT, SENTENCE

pytest.importorskip("gguf", reason='pip install "llamatelemetry-llamacpp[testing]"')
pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
pytest.importorskip("llama_cpp", reason="Q4_K_M is llama.cpp's quantizer: pip install llama-cpp-python")

STAGES = ["finetune", "merge_lora", "export_gguf", "quantize", "benchmark", "deploy"]


def test_the_pipeline_is_one_trace_and_the_fine_tune_survives_every_stage(tmp_path: Path) -> None:
    from llamatelemetry_unsloth.pipeline import run_pipeline

    with InMemoryTelemetry() as telemetry:
        run = run_pipeline(tmp_path / "run", steps=30, bench_requests=2, bench_tokens=8)
        spans = telemetry.spans()

    root = next(s for s in spans if s.name == pnames.SPAN_PIPELINE)
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}, "one trace for the whole run"
    stages = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    assert [s.attributes[pnames.STAGE] for s in sorted(stages, key=lambda s: s.start_time)] == STAGES
    assert all(s.status.status_code.name == "UNSET" for s in spans)
    by_stage = {s.attributes[pnames.STAGE]: s for s in stages}
    assert all(s.attributes[pnames.PIPELINE_ID] == run.context.pipeline_id for s in stages)
    assert root.attributes[pnames.ARTIFACT_COUNT] == len(run.context.manifest)

    # The fine-tune's own telemetry sits under its stage.
    finetune_id = by_stage["finetune"].context.span_id
    train = next(s for s in spans if s.name == names.SPAN_TRAIN)
    assert train.parent is not None and train.parent.span_id == finetune_id
    assert train.attributes[names.STEP] == 30 and train.attributes[names.LORA_RANK] == 8
    assert sum(1 for e in train.events if e.name == names.EVENT_LOG_STEP) == 6
    assert run.final_loss is not None and run.final_loss < 3.0

    assert by_stage["merge_lora"].attributes[names.MERGE_RELOADED_BASE] is False
    assert by_stage["export_gguf"].attributes[pnames.QUANTIZATION_TYPE] == "F16"
    quantize = by_stage["quantize"].attributes
    assert quantize[pnames.QUANTIZATION_TYPE] == "Q4_K_M" and quantize[pnames.QUANTIZATION_FALLBACK_TENSORS] == 0
    bench = by_stage["benchmark"].attributes
    assert bench[names.BENCH_REQUESTS] == 2 and bench[names.BENCH_FAILED] == 0
    assert bench[names.BENCH_TTFT_P50] > 0 and bench[names.BENCH_OUTPUT_TPS] > 0
    assert run.benchmark is not None and run.benchmark.tests[0].summary.completed == 2
    deploy = by_stage["deploy"]
    assert deploy.attributes[names.DEPLOY_HEALTH] == "ok"
    assert deploy.attributes[names.DEPLOY_URL].startswith("http://127.0.0.1:")
    generation = [s for s in spans if s.parent is not None and s.parent.span_id == deploy.context.span_id]
    assert [s.attributes["gen_ai.operation.name"] for s in generation] == ["text_completion"]

    # What the deployed Q4_K_M model says is what the LoRA taught the float32 model.
    assert f"{PROMPT} {run.generated_text.strip()}".startswith(SENTENCE)

    # The manifest names the pipeline and holds every stage's files with their sha256; all still verify.
    saved = json.loads(run.manifest_path.read_text())
    assert saved["pipeline_id"] == run.context.pipeline_id
    manifest = ArtifactManifest.load(run.manifest_path)
    assert manifest.verify().ok and len(manifest) == len(saved["artifacts"])
    outputs = {(a.metadata["stage"], a.kind) for a in manifest.artifacts if a.metadata.get("role") == "output"}
    assert {("finetune", "lora_adapter"), ("merge_lora", "model_weights"), ("quantize", "gguf_model"),
            ("benchmark", "benchmark_report")} <= outputs
    assert manifest.get(run.gguf_path) is not None and run.gguf_path.name == "model-q4_k_m.gguf"
    assert all(len(a.sha256) == 64 for a in manifest.artifacts)


def test_pipeline_demo_prints_the_trace_the_artifacts_and_the_memorised_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llamatelemetry.cli import main

    assert main(["pipeline-demo", "--workdir", str(tmp_path / "demo"), "--steps", "30"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"llamatelemetry.pipeline.{stage} " in out
    assert "llamatelemetry.train " in out and " ms" in out
    assert "quantize output     gguf_model" in out and "model-q4_k_m.gguf" in out and "sha256 " in out
    assert f"{PROMPT} ▸ {SENTENCE.removeprefix(PROMPT).strip()}" in out
    assert "the fine-tuned sentence survived every stage: yes" in out
    assert (tmp_path / "demo" / "manifest.json").is_file()


def test_a_failure_after_the_deployment_stops_its_server(tmp_path: Path) -> None:
    import httpx

    from llamatelemetry_unsloth.pipeline import run_pipeline

    work = tmp_path / "run"
    (work / "manifest.json").mkdir(parents=True)  # the manifest cannot be written: the last step fails
    with InMemoryTelemetry() as telemetry:
        with pytest.raises(OSError):
            run_pipeline(work, steps=2, bench_requests=1, bench_tokens=2, max_tokens=2)
        deploy = telemetry.span(pnames.SPAN_PREFIX + "deploy")
        root = telemetry.span(pnames.SPAN_PIPELINE)
    assert deploy.attributes[names.DEPLOY_HEALTH] == "ok" and root.status.status_code.name == "ERROR"
    with pytest.raises(httpx.TransportError):  # nothing listens there any more
        httpx.get(f"{deploy.attributes[names.DEPLOY_URL]}/health", timeout=5)


def test_a_second_run_in_the_same_workdir_replaces_its_own_files(tmp_path: Path) -> None:
    """The earlier run's F16 is the pipeline's own product: a re-run replaces it (a user's file would be refused)."""
    from llamatelemetry_unsloth.pipeline import run_pipeline

    work = tmp_path / "run"
    first = run_pipeline(work, steps=2, bench_requests=1, bench_tokens=2, max_tokens=2)
    second = run_pipeline(work, steps=2, bench_requests=1, bench_tokens=2, max_tokens=2)
    assert second.context.pipeline_id != first.context.pipeline_id
    assert (work / "model-f16.gguf").is_file() and (work / "model-q4_k_m.gguf").is_file()
    assert ArtifactManifest.load(work / "manifest.json").pipeline_id == second.context.pipeline_id


def test_the_f16_is_named_after_the_output_without_its_type() -> None:
    from llamatelemetry_unsloth.api import _f16_path

    for name in ("model-q4_k_m.gguf", "model-Q8_0.gguf", "model-q6_k.gguf", "model-iq3_xxs.gguf", "model-q4.gguf"):
        assert _f16_path(Path("/w") / name) == Path("/w/model-f16.gguf"), name
    assert _f16_path(Path("/w/my-llama.gguf")) == Path("/w/my-llama-f16.gguf")
