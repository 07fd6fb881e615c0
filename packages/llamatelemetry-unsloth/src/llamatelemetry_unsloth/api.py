"""The API reference's Unsloth functions: ``load_model``, ``merge_lora_adapters``, ``export_to_llamatelemetry``.

``load_model`` loads through Unsloth's ``FastLanguageModel.from_pretrained`` (the only function
here that needs Unsloth). ``merge_lora_adapters`` merges LoRA adapters into 16-bit weights under
the ``merge_lora`` pipeline stage; a 4-bit base is reloaded unquantized and merged there, as
Unsloth advises (it cannot merge into 4-bit weights on a CPU), and the span says so.
``export_to_llamatelemetry`` writes a quantized GGUF through llamatelemetry's own stages: the
``export`` stage ``gguf`` (F16 GGUF, span ``export_gguf``) and the ``quantize`` stage ``gguf``
(span ``quantize``). Unlike Unsloth's ``save_pretrained_gguf``, it needs no llama.cpp binary and
no download.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamatelemetry.artifacts import make_folders, remove_folders
from llamatelemetry.pipeline import attributes as pnames
from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth._deps import import_engine, import_unsloth
from llamatelemetry_unsloth.errors import (
    AdaptersNotMergedError,
    ModelFolderNotFoundError,
    NoLoraAdaptersError,
    OutputPathError,
    UnknownQuantTypeError,
)
from llamatelemetry_unsloth.instrument import adapter_facts, lora_layer_count, traced_merge, traced_model_load

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineStage, PipelineTracer

__all__ = ["load_model", "merge_lora_adapters", "export_to_llamatelemetry", "check_model_folder"]

log = logging.getLogger("llamatelemetry.unsloth")

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``org/name``): it exists, or it is absolute, relative or home-based."""
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def _fail_in_stage(open_stage: Any, context: PipelineContext, error: BaseException) -> None:
    """Open the stage's span and end it with ``error`` (status ERROR) without running anything."""
    try:
        with open_stage(context):
            raise error
    except BaseException as raised:
        if raised is not error:
            raise


def check_model_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder holding a saved model (``config.json``), or ``ModelFolderNotFoundError``."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelFolderNotFoundError(path)
    if not folder.is_dir():
        raise ModelFolderNotFoundError(path, "it is a file, not a folder")
    if not (folder / "config.json").is_file():
        raise ModelFolderNotFoundError(path, "it has no config.json")
    return folder


# ------------------------------------------------------------------ load

def load_model(name_or_path: str | os.PathLike[str], load_in_4bit: bool = True, *, max_seq_length: int = 2048,
               dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """Load a model and its tokenizer with Unsloth's ``FastLanguageModel.from_pretrained``; returns both.

    ``name_or_path`` is a local folder (or a Hub id where the machine can reach the Hub); other
    keyword arguments go to ``from_pretrained``. Traced as a ``llamatelemetry.train.model_load``
    span (model, dtype, 4-bit, parameters, load time, peak memory).
    """
    from llamatelemetry.semconv.mapping import model_display_name

    name = os.fspath(name_or_path)
    with traced_model_load("unsloth", model_display_name(name), load_in_4bit) as loaded:
        if _looks_local(name):
            check_model_folder(name)
        unsloth = import_unsloth("load_model")
        model, tokenizer = unsloth.FastLanguageModel.from_pretrained(
            model_name=name, max_seq_length=max_seq_length, dtype=dtype, load_in_4bit=load_in_4bit, **kwargs)
        loaded(model)
    return model, tokenizer


# ------------------------------------------------------------------ merge

def _tracer_and_context(ctx: PipelineContext | None, tracer: PipelineTracer | None) -> tuple[PipelineTracer,
                                                                                             PipelineContext]:
    from llamatelemetry.pipeline import PipelineContext, PipelineTracer

    return (tracer if tracer is not None else PipelineTracer()), (ctx if ctx is not None else PipelineContext())


def _is_4bit(model: Any) -> bool:
    if getattr(model, "is_loaded_in_4bit", False):
        return True
    modules = getattr(model, "modules", None)
    return callable(modules) and any(type(m).__name__ == "Linear4bit" for m in modules())


def _cuda(torch: Any) -> bool:
    return bool(torch.cuda.is_available())


def _base_source(model: Any) -> str | None:
    """Where the base model of a PEFT model came from (a folder or a Hub id)."""
    configs = getattr(model, "peft_config", None) or {}
    for config in configs.values():
        source = getattr(config, "base_model_name_or_path", None)
        if source:
            return str(source)
    base = getattr(getattr(model, "base_model", None), "model", None)
    name = getattr(base, "name_or_path", None)
    return str(name) if name else None


def _reload_and_merge(model: Any, stage: PipelineStage, torch: Any) -> Any:
    """Save the adapters, reload the base unquantized, attach them again and merge (Unsloth's advice for 4-bit)."""
    transformers = import_engine("transformers", "merge_lora_adapters")
    peft = import_engine("peft", "merge_lora_adapters")
    source = _base_source(model)
    if source is None:
        raise NoLoraAdaptersError(model)
    dtype = torch.float16 if _cuda(torch) else torch.float32
    stage.set_attributes({names.MERGE_RELOADED_BASE: True, names.MERGE_DTYPE: str(dtype).removeprefix("torch.")})
    stage.span.add_event("llamatelemetry.train.merge.reload_base", {
        "llamatelemetry.train.merge.reason": "LoRA cannot be merged into 4-bit weights on this device; the base "
                                             "was reloaded unquantized and the adapters merged into it"})
    with tempfile.TemporaryDirectory(prefix="llamatelemetry-lora-") as scratch:
        model.save_pretrained(scratch)
        base = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype,
                                                                 local_files_only=os.path.isdir(source))
        reattached = peft.PeftModel.from_pretrained(base, scratch)
        return reattached.merge_and_unload()


def merge_lora_adapters(model: Any, ctx: PipelineContext | None = None, *, tracer: PipelineTracer | None = None,
                        save_path: str | os.PathLike[str] | None = None) -> Any:
    """Merge ``model``'s LoRA adapters into its base weights (16-bit) under the ``merge_lora`` stage; returns the merge.

    A 4-bit base (bitsandbytes, Unsloth's ``load_in_4bit``) is reloaded unquantized from where it
    came from and the adapters merged into that, which the span records
    (``llamatelemetry.train.merge.reloaded_base``). With ``save_path`` the merged model (and its
    files in the manifest) is saved there.
    """
    tracer, context = _tracer_and_context(ctx, tracer)
    with tracer.span_merge_lora(context) as stage:
        layers = lora_layer_count(model)
        if not getattr(model, "peft_config", None) or not layers:
            raise NoLoraAdaptersError(model)
        if context.adapter is None:
            context.adapter = str(adapter_facts(model).get(names.ADAPTER_NAME, "default"))
        target = _writable_folder(save_path) if save_path is not None else None
        facts = adapter_facts(model)
        stage.set_attributes({k: v for k, v in facts.items()
                              if k in (names.LORA_RANK, names.LORA_ALPHA, names.LORA_TARGET_MODULES)})
        stage.set_attributes({names.MERGE_METHOD: "merged_16bit", names.MERGED_MODULES: layers})
        torch = import_engine("torch", "merge_lora_adapters")
        with traced_merge({names.MERGE_METHOD: "merged_16bit", names.MERGED_MODULES: layers}):
            if _is_4bit(model):
                merged = _reload_and_merge(model, stage, torch)
            else:
                stage.set_attribute(names.MERGE_RELOADED_BASE, False)
                merged = model.merge_and_unload()
        if target is not None:
            _save_merged(merged, target, stage)
    return merged


def _writable_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path).expanduser()
    parent = folder.parent
    if not parent.is_dir():
        raise OutputPathError(folder, f"its parent folder {parent} does not exist (create it first)")
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(folder, "it is a file; pass a folder path")
    if not _writable(folder if folder.exists() else parent):
        raise OutputPathError(folder, "the folder is read-only; choose a writable one")
    return folder


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``: its permissions, and not on a read-only mount (even for root)."""
    if not os.access(folder, os.W_OK):
        return False
    try:
        return not os.statvfs(folder).f_flag & os.ST_RDONLY
    except (OSError, AttributeError):  # no statvfs (Windows): permissions are all we can tell
        return True


def _save_merged(merged: Any, folder: Path, stage: PipelineStage) -> None:
    merged.save_pretrained(folder)
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES:
            stage.add_output(path, "model_weights", merged=True)
        elif path.name == "config.json":
            stage.add_output(path, "model_config")


# ------------------------------------------------------------------ export

def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_output(path: str | os.PathLike[str]) -> Path:
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputPathError(target, "it is a folder; pass a file path such as model-q4_k_m.gguf")
    found = _existing_ancestor(target.parent)  # missing folders are created (the export stage does the same)
    if not found.is_dir():
        raise OutputPathError(target, f"{found} is a file, not a folder (choose another output path)")
    if not _writable(found):
        raise OutputPathError(target, f"the folder {found} is read-only (choose a writable folder, e.g. "
                                      "/kaggle/working rather than /kaggle/input)")
    return target


def _check_quant_type(quant_type: object) -> str:
    """The normalized type, if it has the shape of a GGUF type and a GGUF quantize stage is installed."""
    from llamatelemetry.quantization import find_stage, is_gguf_type

    if not isinstance(quant_type, str) or not is_gguf_type(quant_type):
        raise UnknownQuantTypeError(quant_type)
    find_stage("quantize", "gguf")  # the core's "not installed" error (with the install command), before any work
    return quant_type.strip().upper()


def _check_quantizer(kind: str) -> str:
    """``kind`` if the installed quantizer makes it, else the quantize stage's own error (types, install command)."""
    from llamatelemetry_llamacpp.quantize import check_quant_type

    # Q9_0, or Q4_K_M without llama-cpp-python: refused now, not after the F16 export.
    return check_quant_type(kind)


# A GGUF type at the end of a file name (model-q4_k_m, model-Q8_0, model-iq3_xxs, model-q4): dropped for the F16's name.
_TYPE_SUFFIX = re.compile(r"-(?:i?q\d(?:_[0-9a-z]+)*|tq\d_\d|bf16|f16|f32)$", re.IGNORECASE)


def _f16_path(target: Path) -> Path:
    return target.with_name(f"{_TYPE_SUFFIX.sub('', target.stem)}-f16.gguf")


def export_to_llamatelemetry(model: Any, tokenizer: Any = None, output_path: str | os.PathLike[str] = "model-q4.gguf",
                             pipeline_ctx: PipelineContext | None = None, quant_type: str = "Q4_K_M", *,
                             tracer: PipelineTracer | None = None, keep_f16: bool = True,
                             **export_options: Any) -> str:
    """Write ``model`` as a ``quant_type`` GGUF at ``output_path`` through llamatelemetry's export and quantize stages.

    ``model`` is a merged model object (with its ``tokenizer``) or a saved model folder. The F16
    GGUF (stage ``export_gguf``) is written beside the output as ``<name>-f16.gguf`` and kept in
    the manifest (an existing file of that name is refused, never overwritten); with
    ``keep_f16=False`` it goes to a temporary file, removed afterwards. The ``quantize`` stage
    writes the output; missing output folders are created (and removed if the chain fails).
    Returns the output path. Bad input (unknown type, read-only folder, LoRA not merged) fails
    before anything is written, with an ERROR ``export_gguf`` span; a type the installed
    quantizer cannot make, with the quantize stage's error and an ERROR ``quantize`` span.
    """
    from llamatelemetry.quantization import QuantizationPipeline
    from llamatelemetry.quantization.gguf import convert_to_gguf

    tracer, context = _tracer_and_context(pipeline_ctx, tracer)
    try:
        kind = _check_quant_type(quant_type)
        target = _check_output(output_path)
        if isinstance(model, (str, os.PathLike)):
            check_model_folder(model)
        elif getattr(model, "peft_config", None) and lora_layer_count(model):
            raise AdaptersNotMergedError()
        f16 = _f16_path(target) if keep_f16 else target.with_name(f".{target.name}.{os.getpid()}.f16.gguf")
        if keep_f16 and f16.exists():  # a user's file: never overwritten, nor removed if the chain fails
            raise OutputPathError(f16, "a file is there, and export_to_llamatelemetry keeps the F16 GGUF it writes "
                                       "under that name beside the output. Move or remove it, choose another "
                                       "output path, or pass keep_f16=False (the F16 then goes to a temporary "
                                       "file that is removed)")
    except Exception as exc:
        _fail_in_stage(tracer.span_export_gguf, context, exc)  # the stage asked for ends in ERROR
        raise
    try:
        kind = _check_quantizer(kind)
    except Exception as exc:  # the quantize stage's refusal: that stage's span ends in ERROR, as when it runs
        attributes: dict[str, Any] = {pnames.QUANTIZATION_METHOD: "gguf", pnames.QUANTIZATION_TYPE: kind}
        _fail_in_stage(functools.partial(tracer.span_quantize, **attributes), context, exc)
        raise
    try:
        created = make_folders(target.parent)
    except OSError as exc:
        error = OutputPathError(target, f"its folder could not be created ({exc.strerror or exc})")
        _fail_in_stage(tracer.span_export_gguf, context, error)
        raise error from exc
    if context.quantization is None:
        context.quantization = kind
    if tokenizer is not None:
        export_options["tokenizer"] = tokenizer
    started = time.perf_counter()
    try:
        convert_to_gguf(model, f16, outtype="f16", ctx=context, tracer=tracer, **export_options)
        QuantizationPipeline(pipeline_ctx=context, tracer=tracer).run(os.fspath(f16), output_path=os.fspath(target),
                                                                      quant_type=kind)
    except BaseException:
        f16.unlink(missing_ok=True)  # ours (an existing one was refused above): nothing half-done stays behind
        remove_folders(created)  # nor the folders made for the output
        raise
    if not keep_f16:
        f16.unlink(missing_ok=True)
    log.info("exported %s (%s) in %.1f s", target, kind, time.perf_counter() - started)
    context.output_artifact = str(target.resolve())
    return str(target.resolve())
