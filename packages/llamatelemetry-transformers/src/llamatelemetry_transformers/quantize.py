"""The quantization stages of the transformers plugin: ``quantize_dynamic`` (torch int8) and ``quantize_nf4``.

Both follow ``llamatelemetry.quantization.QuantizationStage``: each runs inside a
``llamatelemetry.pipeline.quantize`` span and records the files it read (the model folder's
config and weights, when the model came from one) and wrote in the pipeline context's
``ArtifactManifest``. ``QuantizationPipeline`` finds them through the plugin's
``llamatelemetry_register_stages`` hook (``quantize:dynamic``, ``quantize:nf4``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from llamatelemetry.pipeline import attributes as names
from llamatelemetry.quantization.stages import QuantizationResult
from llamatelemetry_transformers._deps import import_torch, import_transformers
from llamatelemetry_transformers.errors import (
    ModelFolderNotFoundError,
    QuantizationError,
    QuantizationUnavailableError,
)

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineStage, PipelineTracer

__all__ = ["quantize_dynamic", "quantize_nf4", "BitsandbytesNotInstalledError"]

_DYNAMIC_TYPES: Final = {"qint8": "qint8", "int8": "qint8", "dynamic": "qint8", "dynamic_int8": "qint8",
                         "float16": "float16", "fp16": "float16"}
_NF4_TYPES: Final = {"nf4": "nf4", "bnb_nf4": "nf4", "fp4": "fp4", "bnb_fp4": "fp4"}
_WEIGHT_SUFFIXES: Final = (".safetensors", ".bin", ".pt", ".pth")
# bitsandbytes quantizes to 4 bits on the CPU from this version on.
_BNB_CPU_VERSION: Final = (0, 45)

log = logging.getLogger("llamatelemetry.transformers")


class BitsandbytesNotInstalledError(QuantizationUnavailableError, ImportError):
    """bitsandbytes, which NF4 quantization runs on, is not installed."""

    def __init__(self) -> None:
        self.install_command = "pip install bitsandbytes"
        # RuntimeError (through QuantizationError) comes before ImportError in the MRO and takes no name=.
        ImportError.__init__(self, "quantize_nf4 needs bitsandbytes, which is not installed. Install it with: pip "
                             "install bitsandbytes (>= 0.45 runs on the CPU too), or use quantize_dynamic (int8, "
                             "torch only).", name="bitsandbytes")


# ------------------------------------------------------------------ shared

def _tracer_and_context(ctx: PipelineContext | None, tracer: PipelineTracer | None,
                        base_model: str | None) -> tuple[PipelineTracer, PipelineContext]:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer

    context = ctx if ctx is not None else PipelineContext()
    if context.base_model is None and base_model:
        context.base_model = base_model
    return (tracer if tracer is not None else PipelineTracer()), context


def _model_folder(model: Any) -> Path | None:
    """The local folder a model was loaded from, if it is one (a Hub id is not)."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    name = getattr(model, "name_or_path", None)
    if isinstance(name, str) and name and os.path.isdir(name):
        return Path(name)
    return None


def _folder_files(folder: Path) -> Iterator[tuple[Path, str]]:
    """The model files of a save_pretrained folder, with their artifact kinds."""
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix in _WEIGHT_SUFFIXES:
            yield path, "model_weights"
        elif path.name == "config.json":
            yield path, "model_config"


def _record_inputs(stage: PipelineStage, folder: Path | None) -> None:
    if folder is None:
        return
    for path, kind in _folder_files(folder):
        stage.add_input(path, kind)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelFolderNotFoundError(folder)
    if not (folder / "config.json").is_file():
        raise ModelFolderNotFoundError(folder, "it has no config.json (write one with model.save_pretrained(folder))")


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a state-dict value (quantized linear layers keep theirs in nested tuples)."""
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    numel, size = getattr(value, "numel", None), getattr(value, "element_size", None)
    if callable(numel) and callable(size):
        return int(numel()) * int(size())
    return 0


def _state_bytes(model: Any) -> int:
    return sum(_tensor_bytes(value) for value in model.state_dict().values())


def _ignore_torch_ao_warnings() -> None:
    # torch announces torch.ao.quantization's removal on every call; the API still works in the pinned
    # torch, and the warning would repeat for each quantized model without telling the user anything new.
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated.*")


# ------------------------------------------------------------------ torch dynamic int8

def quantize_dynamic(model: Any, output_path: str | os.PathLike[str] | None = None, *,
                     quant_type: str | None = "qint8", ctx: PipelineContext | None = None,
                     tracer: PipelineTracer | None = None, inplace: bool = False) -> QuantizationResult:
    """Quantize the model's ``nn.Linear`` layers to int8 (torch dynamic quantization, runs on the CPU).

    ``model`` is a transformers model or a local folder written by ``save_pretrained``.
    ``quant_type`` is ``"qint8"`` (also ``"int8"``) or ``"float16"``. With ``output_path`` the
    quantized state dict is written there with ``torch.save`` (load it into a model quantized the
    same way). The model is copied first unless ``inplace``.
    """
    kind = _DYNAMIC_TYPES.get((quant_type or "qint8").strip().lower())
    if kind is None:
        raise ValueError(f"quantize_dynamic makes 'qint8' (int8) or 'float16' weights, not quant_type={quant_type!r}; "
                         "for 4-bit use quantize_nf4, for GGUF types llama.cpp's llama-quantize.")
    torch = import_torch("quantize_dynamic")
    folder = _model_folder(model)
    tracer, context = _tracer_and_context(ctx, tracer, _base_model_name(model, folder))
    started = time.perf_counter()
    with tracer.span_quantize(context, **{names.QUANTIZATION_METHOD: "dynamic",
                                          names.QUANTIZATION_TYPE: kind}) as stage:
        if isinstance(model, (str, os.PathLike)):
            assert folder is not None
            _check_folder(folder)
            model = import_transformers("quantize_dynamic").AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True)
            inplace = True  # a model loaded here is nobody else's
        _record_inputs(stage, folder)
        size_before = _state_bytes(model)
        with warnings.catch_warnings():
            _ignore_torch_ao_warnings()
            quantized = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=getattr(torch, kind), inplace=inplace)
            modules = sum(1 for module in quantized.modules()
                          if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic"))
            # transformers' Conv1D (GPT-2 family) holds weights like a Linear, but torch does not quantize it.
            skipped = sum(1 for module in quantized.modules() if type(module).__name__ == "Conv1D")
            if not modules:
                raise QuantizationError(
                    f"quantize_dynamic found no torch.nn.Linear layer in {type(model).__name__} to quantize"
                    + (f" ({skipped} transformers Conv1D layers, which torch dynamic quantization does not handle)"
                       if skipped else "") + ". Use a model with nn.Linear layers (Llama, Mistral, Qwen, ...) "
                    "or quantize_nf4.")
            if skipped:
                log.warning("quantize_dynamic left %d Conv1D layers of %s in float (torch dynamic quantization "
                            "handles nn.Linear only); %d nn.Linear layers were quantized", skipped,
                            type(model).__name__, modules)
            size_after = _state_bytes(quantized)
        stage.set_attributes({names.QUANTIZATION_SIZE_BEFORE: size_before, names.QUANTIZATION_SIZE_AFTER: size_after,
                              names.QUANTIZATION_MODULES: modules, names.QUANTIZATION_MODULES_SKIPPED: skipped})
        written: str | None = None
        if output_path is not None:
            target = Path(output_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(quantized.state_dict(), target)
            written = str(stage.add_output(target, "torch_state_dict", method="dynamic", quant_type=kind).path)
    return QuantizationResult(method="dynamic", quant_type=kind, model=quantized, output_path=written,
                              size_before_bytes=size_before, size_after_bytes=size_after,
                              duration_s=time.perf_counter() - started, artifacts=tuple(stage.outputs),
                              context=context)


def _base_model_name(model: Any, folder: Path | None) -> str | None:
    from llamatelemetry.semconv.mapping import model_display_name

    if folder is not None:
        return folder.name
    name = getattr(model, "name_or_path", None)
    return model_display_name(name) if isinstance(name, str) and name else None


# ------------------------------------------------------------------ bitsandbytes NF4

def _nf4_device_map(torch: Any, device_map: Any) -> Any:
    """Where bitsandbytes puts the 4-bit model: the caller's choice, else the current CUDA device, else the CPU."""
    if device_map is not None:
        return device_map
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def _on_cpu(device_map: Any) -> bool:
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    return all(str(value) == "cpu" for value in values)


def _import_bitsandbytes(on_cpu: bool) -> Any:
    import importlib

    try:
        module = importlib.import_module("bitsandbytes")
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "bitsandbytes":
            raise
        raise BitsandbytesNotInstalledError() from exc
    version = tuple(int(part) for part in str(getattr(module, "__version__", "0")).split(".")[:2] if part.isdigit())
    if on_cpu and version < _BNB_CPU_VERSION:
        raise QuantizationUnavailableError(
            f"quantize_nf4 on the CPU needs bitsandbytes >= {'.'.join(map(str, _BNB_CPU_VERSION))} (installed: "
            f"{getattr(module, '__version__', 'unknown')}): pip install --upgrade bitsandbytes, or run it on a CUDA "
            "GPU, or use quantize_dynamic (int8 on the CPU).")
    return module


def quantize_nf4(model: Any, output_path: str | os.PathLike[str] | None = None, *, quant_type: str | None = "nf4",
                 ctx: PipelineContext | None = None, tracer: PipelineTracer | None = None,
                 compute_dtype: str | None = None, double_quant: bool = True,
                 device_map: Any = None) -> QuantizationResult:
    """Load the model in bitsandbytes 4-bit (``"nf4"`` or ``"fp4"``); save it to ``output_path``.

    ``model`` is a local folder written by ``save_pretrained``, or a model object (loaded from
    such a folder, or saved to a temporary one first). It runs on the current CUDA GPU when there
    is one, else on the CPU (bitsandbytes >= 0.45); ``device_map`` chooses (``"cpu"``,
    ``{"": 0}``, ``"auto"``). ``compute_dtype`` defaults to ``bfloat16`` on a GPU, ``float32`` on the CPU.
    """
    kind = _NF4_TYPES.get((quant_type or "nf4").strip().lower())
    if kind is None:
        raise ValueError(f"quantize_nf4 makes 'nf4' or 'fp4' weights, not quant_type={quant_type!r}; for int8 use "
                         "quantize_dynamic.")
    torch = import_torch("quantize_nf4")
    placement = _nf4_device_map(torch, device_map)
    on_cpu = _on_cpu(placement)
    _import_bitsandbytes(on_cpu)
    compute = compute_dtype or ("float32" if on_cpu else "bfloat16")
    transformers = import_transformers("quantize_nf4")
    folder = _model_folder(model)
    tracer, context = _tracer_and_context(ctx, tracer, _base_model_name(model, folder))
    started = time.perf_counter()
    with tracer.span_quantize(context, **{names.QUANTIZATION_METHOD: "nf4", names.QUANTIZATION_TYPE: kind,
                                          names.QUANTIZATION_ENGINE: "bitsandbytes-cpu" if on_cpu
                                          else "bitsandbytes-cuda"}) as stage, \
            tempfile.TemporaryDirectory(prefix="llamatelemetry-nf4-") as scratch:
        if folder is None:  # an in-memory model: bitsandbytes quantizes while loading, so save it first
            model.save_pretrained(scratch)
            source = Path(scratch)
            size_before = _state_bytes(model)
        else:
            _check_folder(folder)
            source = folder
            _record_inputs(stage, folder)
            size_before = sum(path.stat().st_size for path, kind_ in _folder_files(folder) if kind_ == "model_weights")
        config = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=getattr(torch, compute),
            bnb_4bit_use_double_quant=double_quant)
        quantized = transformers.AutoModelForCausalLM.from_pretrained(
            source, quantization_config=config, local_files_only=True, device_map=placement)
        size_after = int(quantized.get_memory_footprint())
        modules = sum(1 for module in quantized.modules() if type(module).__name__ == "Linear4bit")
        stage.set_attributes({names.QUANTIZATION_SIZE_BEFORE: size_before, names.QUANTIZATION_SIZE_AFTER: size_after,
                              names.QUANTIZATION_MODULES: modules})
        written: str | None = None
        if output_path is not None:
            target = Path(output_path)
            quantized.save_pretrained(target)
            for path, file_kind in _folder_files(target):
                stage.add_output(path, "bnb_4bit_weights" if file_kind == "model_weights" else file_kind,
                                 method="nf4", quant_type=kind)
            written = str(target.resolve())
    return QuantizationResult(method="nf4", quant_type=kind, model=quantized, output_path=written,
                              size_before_bytes=size_before, size_after_bytes=size_after,
                              duration_s=time.perf_counter() - started, artifacts=tuple(stage.outputs),
                              context=context, engine="bitsandbytes-cpu" if on_cpu else "bitsandbytes-cuda")
