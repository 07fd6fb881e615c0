"""PipelineStage artifacts: a file one stage writes and the next reads keeps its producer's record."""

from __future__ import annotations

from pathlib import Path

from llamatelemetry.pipeline import PipelineContext, PipelineTracer


def test_a_file_read_by_a_later_stage_keeps_the_record_of_the_stage_that_wrote_it(tmp_path: Path) -> None:
    ctx = PipelineContext(base_model="tiny")
    tracer = PipelineTracer()
    exported = tmp_path / "model-f16.gguf"
    with tracer.span_export_gguf(ctx) as stage:
        exported.write_bytes(b"GGUF f16")
        written = stage.add_output(exported, kind="gguf_model")
    with tracer.span_quantize(ctx) as stage:
        read = stage.add_input(exported, kind="gguf_model")
    assert read == written
    record = ctx.manifest.get(exported)
    assert record is not None and record.metadata["stage"] == "export_gguf" and record.metadata["role"] == "output"


def test_a_file_changed_since_its_stage_wrote_it_is_recorded_anew(tmp_path: Path) -> None:
    ctx = PipelineContext(base_model="tiny")
    tracer = PipelineTracer()
    exported = tmp_path / "model-f16.gguf"
    with tracer.span_export_gguf(ctx) as stage:
        exported.write_bytes(b"GGUF f16")
        written = stage.add_output(exported, kind="gguf_model")
    exported.write_bytes(b"GGUF edited by hand")
    with tracer.span_quantize(ctx) as stage:
        read = stage.add_input(exported, kind="gguf_model")
    assert read.sha256 != written.sha256
    record = ctx.manifest.get(exported)
    assert record is not None and record.metadata["stage"] == "quantize" and record.metadata["role"] == "input"
