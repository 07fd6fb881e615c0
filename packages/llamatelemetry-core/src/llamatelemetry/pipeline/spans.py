"""``PipelineTracer`` and ``PipelineContext``: one span per pipeline stage, with its artifacts in a manifest.

Each stage (``span_finetune``, ``span_merge_lora``, ``span_export_gguf``, ``span_quantize``,
``span_benchmark``, ``span_deploy``, or ``stage(name)`` for another) is a context manager that
opens an INTERNAL span named ``llamatelemetry.pipeline.<stage>``, current while the stage runs,
and yields a ``PipelineStage`` to record what the stage read and wrote. An exception ends the
span with status ERROR and ``error.type`` and propagates. Each stage's duration is recorded in
the ``llamatelemetry.pipeline.stage.duration`` histogram.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from llamatelemetry.artifacts import Artifact, ArtifactManifest, sha256_file
from llamatelemetry.pipeline import attributes as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["PipelineContext", "PipelineStage", "PipelineTracer"]


def _new_pipeline_id() -> str:
    return uuid.uuid4().hex


def _manifest_for(context: PipelineContext) -> ArtifactManifest:
    return ArtifactManifest(pipeline_id=context.pipeline_id)


@attrs.define
class PipelineContext:
    """What a pipeline run is about; every stage span carries it, and its manifest collects the artifacts.

    ``output_artifact`` is updated by each stage that writes one, so it names the latest product.

    Example::

        ctx = PipelineContext(base_model="meta-llama/Llama-3.2-1B", quantization="Q4_K_M")
        with PipelineTracer().span_quantize(ctx) as stage:
            stage.add_output("model-q4.gguf", kind="gguf_model")
        ctx.manifest.save("manifest.json")
    """

    base_model: str | None = None
    adapter: str | None = None
    quantization: str | None = None
    output_artifact: str | None = None
    pipeline_id: str = attrs.field(factory=_new_pipeline_id)
    manifest: ArtifactManifest = attrs.field(default=attrs.Factory(_manifest_for, takes_self=True))

    def attributes(self) -> dict[str, str]:
        """The context as span attributes (unset fields left out)."""
        values = {names.PIPELINE_ID: self.pipeline_id, names.BASE_MODEL: self.base_model,
                  names.ADAPTER: self.adapter, names.QUANTIZATION: self.quantization,
                  names.OUTPUT_ARTIFACT: self.output_artifact}
        return {key: value for key, value in values.items() if value}


class PipelineStage:
    """The running stage: add attributes and the artifacts it read (inputs) and wrote (outputs)."""

    def __init__(self, name: str, span: Span, context: PipelineContext) -> None:
        self.name = name
        self.span = span
        self.context = context
        self.inputs: list[Artifact] = []
        self.outputs: list[Artifact] = []

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute on the stage's span."""
        self.span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set attributes on the stage's span."""
        self.span.set_attributes(attributes)

    def add_input(self, path: str | os.PathLike[str], kind: str, **metadata: Any) -> Artifact:
        """Record a file the stage read (hashed now) in the manifest and on the span.

        A file an earlier stage wrote keeps that stage's record (its producer) when its content is
        unchanged; a changed or unknown file is recorded as this stage's input.
        """
        produced = self.context.manifest.get(path)
        if (produced is not None and produced.metadata.get("role") == "output"
                and os.path.isfile(produced.path) and os.path.getsize(produced.path) == produced.size_bytes
                and sha256_file(produced.path) == produced.sha256):
            self.inputs.append(produced)
            return produced
        artifact = self.context.manifest.add(path, kind, stage=self.name, role="input", **metadata)
        self.inputs.append(artifact)
        return artifact

    def add_output(self, path: str | os.PathLike[str], kind: str, **metadata: Any) -> Artifact:
        """Record a file the stage wrote (hashed now); it becomes the context's ``output_artifact``."""
        artifact = self.context.manifest.add(path, kind, stage=self.name, role="output", **metadata)
        self.outputs.append(artifact)
        self.context.output_artifact = artifact.path
        return artifact

    def _artifact_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        if self.inputs:
            attributes[names.INPUT_ARTIFACTS] = [a.path for a in self.inputs]
            attributes[names.INPUT_ARTIFACTS_SIZE] = sum(a.size_bytes for a in self.inputs)
        if self.outputs:
            attributes[names.OUTPUT_ARTIFACTS] = [a.path for a in self.outputs]
            attributes[names.OUTPUT_ARTIFACTS_SIZE] = sum(a.size_bytes for a in self.outputs)
            attributes[names.OUTPUT_ARTIFACT] = self.outputs[-1].path
        return attributes


def _create_stage_histogram(meter: Any) -> Any:
    from llamatelemetry.semconv.metrics import DURATION_BUCKETS

    # Stages run for seconds to hours: the duration buckets, extended past 81.92 s by doubling.
    buckets = [*DURATION_BUCKETS, *(DURATION_BUCKETS[-1] * 2**i for i in range(1, 8))]
    return meter.create_histogram(names.METRIC_STAGE_DURATION, unit="s", description="Duration of one pipeline stage.",
                                  explicit_bucket_boundaries_advisory=buckets)


def _stage_histogram() -> Any:
    from llamatelemetry._runtime import cached_instruments

    return cached_instruments("llamatelemetry.pipeline", _create_stage_histogram)


class PipelineTracer:
    """Opens a span per pipeline stage; the spans go to llamatelemetry's tracer (``init()``) or the global one.

    Example::

        tracer = PipelineTracer()
        with tracer.span_finetune(ctx):
            train()
        with tracer.span_quantize(ctx) as stage:
            stage.add_output(quantize(), kind="gguf_model")
    """

    @contextlib.contextmanager
    def stage(self, name: str, ctx: PipelineContext | None = None, **attributes: Any) -> Iterator[PipelineStage]:
        """A span for the stage ``name`` (``llamatelemetry.pipeline.<name>``), current while the block runs."""
        from opentelemetry import trace

        from llamatelemetry._runtime import get_tracer
        from llamatelemetry.decorators import error_type, record_error

        if not name or not isinstance(name, str):
            raise ValueError("PipelineTracer.stage needs a stage name, e.g. 'quantize'.")
        context = ctx if ctx is not None else PipelineContext()
        start_attributes = {names.STAGE: name, **context.attributes(), **attributes}
        started = time.perf_counter()
        with get_tracer().start_as_current_span(
            names.SPAN_PREFIX + name, kind=trace.SpanKind.INTERNAL, attributes=start_attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            stage = PipelineStage(name, span, context)
            try:
                yield stage
            except BaseException as exc:
                if span.is_recording():
                    span.set_attributes(stage._artifact_attributes())
                record_error(span, exc)
                _stage_histogram().record(time.perf_counter() - started, {
                    names.STAGE: name, names.OUTCOME: "error", "error.type": error_type(exc)})
                raise
            if span.is_recording():
                span.set_attributes(stage._artifact_attributes())
        _stage_histogram().record(time.perf_counter() - started, {names.STAGE: name, names.OUTCOME: "ok"})

    @contextlib.contextmanager
    def pipeline(self, ctx: PipelineContext | None = None, **attributes: Any) -> Iterator[PipelineContext]:
        """The span of a whole run (``llamatelemetry.pipeline``): stage spans opened inside it are its children.

        Yields the context; when the block ends the span records how many artifacts the manifest holds.
        An exception ends it with status ERROR and ``error.type`` and propagates.
        """
        from opentelemetry import trace

        from llamatelemetry._runtime import get_tracer
        from llamatelemetry.decorators import record_error

        context = ctx if ctx is not None else PipelineContext()
        with get_tracer().start_as_current_span(
            names.SPAN_PIPELINE, kind=trace.SpanKind.INTERNAL, attributes={**context.attributes(), **attributes},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield context
            except BaseException as exc:
                record_error(span, exc)
                raise
            finally:
                if span.is_recording():
                    span.set_attributes({**context.attributes(), names.ARTIFACT_COUNT: len(context.manifest)})

    def span_finetune(self, ctx: PipelineContext | None = None,
                      **attributes: Any) -> contextlib.AbstractContextManager[PipelineStage]:
        """The fine-tuning stage."""
        return self.stage(names.STAGE_FINETUNE, ctx, **attributes)

    def span_merge_lora(self, ctx: PipelineContext | None = None,
                        **attributes: Any) -> contextlib.AbstractContextManager[PipelineStage]:
        """Merging LoRA adapters into the base model."""
        return self.stage(names.STAGE_MERGE_LORA, ctx, **attributes)

    def span_export_gguf(self, ctx: PipelineContext | None = None,
                         **attributes: Any) -> contextlib.AbstractContextManager[PipelineStage]:
        """Exporting the model to GGUF."""
        return self.stage(names.STAGE_EXPORT_GGUF, ctx, **attributes)

    def span_quantize(self, ctx: PipelineContext | None = None,
                      **attributes: Any) -> contextlib.AbstractContextManager[PipelineStage]:
        """Quantizing the model."""
        return self.stage(names.STAGE_QUANTIZE, ctx, **attributes)

    def span_benchmark(self, ctx: PipelineContext | None = None,
                       **attributes: Any) -> contextlib.AbstractContextManager[PipelineStage]:
        """Benchmarking the product."""
        return self.stage(names.STAGE_BENCHMARK, ctx, **attributes)

    def span_deploy(self, ctx: PipelineContext | None = None,
                    **attributes: Any) -> contextlib.AbstractContextManager[PipelineStage]:
        """Deploying the product."""
        return self.stage(names.STAGE_DEPLOY, ctx, **attributes)
