"""The ``export:gguf`` stage: a Hugging Face causal LM written to a GGUF file that llama.cpp loads.

Our writer, on the ``gguf`` package, handles the llama family (``LlamaForCausalLM``,
``MistralForCausalLM``) and ``Qwen2ForCausalLM`` with either tokenizer style (see
``gguf_vocab``), as ``f32``, ``f16``, ``bf16`` or ``q8_0``, offline. For other architectures the
stage runs llama.cpp's own ``convert_hf_to_gguf.py`` when one is configured (``converter=`` or
``LLAMATELEMETRY_GGUF_CONVERTER``; see ``gguf_convert_script``). The stage is a
``llamatelemetry.pipeline.export_gguf`` span; the file is written next to its destination under a
temporary name and renamed at the end, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from llamatelemetry.artifacts import make_folders, remove_folders
from llamatelemetry.pipeline import attributes as names
from llamatelemetry.quantization.gguf import (
    GGUF_OUTTYPES,
    GGUFExportError,
    GGUFWriteError,
    UnsupportedArchitectureError,
    UnsupportedTokenizerError,
)
from llamatelemetry.quantization.stages import QuantizationResult
from llamatelemetry_transformers._deps import import_torch
from llamatelemetry_transformers.errors import ModelFolderNotFoundError
from llamatelemetry_transformers.gguf_vocab import add_vocab, tokenizer_files
from llamatelemetry_transformers.semconv import GGUF_ARCHITECTURE, GGUF_TOKENIZER, GGUF_TOKENIZER_PRE

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineStage, PipelineTracer

__all__ = ["export_gguf", "GGUFPackageNotInstalledError", "KNOWN_ARCHITECTURES", "METHOD"]

#: ``QuantizationResult.method`` of an export.
METHOD: Final = "gguf_export"
#: The ``config.json`` architectures our writer knows -> (GGUF architecture, whether q/k rows are permuted).
_ARCHITECTURES: Final = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}
KNOWN_ARCHITECTURES: Final = tuple(_ARCHITECTURES)
_ENGINE_WRITER: Final = "llamatelemetry"
_ENGINE_SCRIPT: Final = "convert_hf_to_gguf.py"


GGUF_INSTALL_COMMAND: Final = 'pip install "llamatelemetry-transformers[gguf]"'


class GGUFPackageNotInstalledError(GGUFExportError, ImportError):
    """The ``gguf`` package, which the export writes with, is not installed."""

    def __init__(self) -> None:
        self.install_command = GGUF_INSTALL_COMMAND
        # RuntimeError (through GGUFExportError) comes before ImportError in the MRO and takes no name=.
        ImportError.__init__(self, f"convert_to_gguf writes GGUF files with the gguf package, which is not "
                             f"installed: {GGUF_INSTALL_COMMAND} (or pip install gguf numpy).", name="gguf")


def _require_gguf() -> None:
    import importlib

    try:
        importlib.import_module("gguf")
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] not in ("gguf", "numpy"):
            raise
        raise GGUFPackageNotInstalledError() from exc


def _file_type(outtype: str) -> tuple[Any, Any]:
    """(``general.file_type``, the ggml type of 2-D weights) for an outtype."""
    import gguf

    table = {
        "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
        "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    }
    return table[outtype]


def _normalise_outtype(outtype: str | None) -> str:
    value = (outtype or "f16").strip().lower()
    if value not in GGUF_OUTTYPES:
        raise ValueError(f"GGUF export writes outtype {', '.join(GGUF_OUTTYPES)}, not {outtype!r}; for smaller types "
                         "(Q4_K_M, Q6_K, ...) export then quantize: QuantizationPipeline().run(model, "
                         "output_path=..., quant_type='Q4_K_M').")
    return value


# ------------------------------------------------------------------ where the model comes from

@attrs.frozen
class _Source:
    """A model to export: its config, a way to iterate its tensors, its tokenizer folder, and its files."""

    config: Mapping[str, Any]
    tensors: Callable[[], Iterator[tuple[str, Any]]]
    tokenizer_dir: Path
    folder: Path | None
    files: tuple[tuple[Path, str], ...]
    name: str


def _folder_tensors(folder: Path) -> Callable[[], Iterator[tuple[str, Any]]]:
    weights = sorted(folder.glob("*.safetensors"))
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not weights and not bins:
        raise ModelFolderNotFoundError(folder, "it has no *.safetensors or pytorch_model*.bin weights")

    def iterate() -> Iterator[tuple[str, Any]]:
        torch = import_torch("convert_to_gguf")
        if weights:
            from safetensors import safe_open

            for path in weights:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                        yield key, handle.get_tensor(key)
        else:
            for path in bins:
                yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()

    return iterate


def _from_folder(folder: Path) -> _Source:
    if not folder.is_dir():
        raise ModelFolderNotFoundError(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderNotFoundError(folder, "it has no config.json (write one with model.save_pretrained(folder))")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    files = [(config_path, "model_config")]
    files += [(path, "model_weights") for path in sorted(folder.iterdir())
              if path.is_file() and path.suffix in (".safetensors", ".bin")]
    files += [(path, "tokenizer") for path in tokenizer_files(folder)]
    return _Source(config=config, tensors=_folder_tensors(folder), tokenizer_dir=folder, folder=folder,
                   files=tuple(files), name=folder.name)


def _from_object(model: Any, tokenizer: Any, scratch: Path) -> _Source:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise TypeError(f"convert_to_gguf exports a transformers model object or a model folder, not "
                        f"{type(model).__name__}.")
    name_or_path = getattr(model, "name_or_path", "") or ""
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_pretrained"):
            raise TypeError(f"tokenizer= must be a transformers tokenizer, not {type(tokenizer).__name__}.")
        tokenizer.save_pretrained(scratch)
        tokenizer_dir = scratch
    elif name_or_path and (Path(name_or_path) / "tokenizer.json").is_file():
        tokenizer_dir = Path(name_or_path)
    else:
        raise UnsupportedTokenizerError(
            f"the {type(model).__name__} object came with no tokenizer (pass tokenizer=, the model's transformers "
            "tokenizer, or export the folder it was saved to)")
    state = model.state_dict()

    def iterate() -> Iterator[tuple[str, Any]]:
        yield from state.items()

    files = tuple((path, "tokenizer") for path in tokenizer_files(tokenizer_dir)) if tokenizer is None else ()
    values = config.to_dict()
    if not values.get("architectures"):  # set by save_pretrained; a model built in code has none yet
        values["architectures"] = [type(model).__name__]
    return _Source(config=values, tensors=iterate, tokenizer_dir=tokenizer_dir, folder=None,
                   files=files, name=Path(name_or_path).name if name_or_path else type(model).__name__)


# ------------------------------------------------------------------ the writer

def _config_value(config: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _rope(config: Mapping[str, Any]) -> tuple[float, Mapping[str, Any]]:
    """rope theta and scaling; transformers 5 keeps both under ``rope_parameters``, older ones at the top level."""
    parameters = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or parameters
    theta = _config_value(config, "rope_theta") or parameters.get("rope_theta") or 10000.0
    return float(theta), scaling


def _permute(weights: Any, heads: int) -> Any:
    """llama.cpp's row order for q/k: HF interleaves the rotary halves per head; GGUF llama pairs them."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _llama3_rope_factors(theta: float, head_dim: int, scaling: Mapping[str, Any]) -> Any:
    """Per-frequency divisors of Llama 3.1's rope scaling, which llama.cpp reads from a ``rope_freqs`` tensor."""
    import numpy as np

    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _add_hparams(writer: Any, config: Mapping[str, Any], arch_name: str, outtype: str, name: str) -> dict[str, Any]:
    import gguf

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(_config_value(config, "num_key_value_heads") or heads)
    head_dim = int(_config_value(config, "head_dim") or hidden // heads)
    theta, scaling = _rope(config)
    writer.add_name(name)
    writer.add_context_length(int(_config_value(config, "max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(_config_value(config, "rms_norm_eps") or 1e-6))
    writer.add_rope_freq_base(theta)
    writer.add_file_type(int(_file_type(outtype)[0]))
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    extra: dict[str, Any] = {}
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif rope_type == "llama3" and arch_name == "llama":
        extra["rope_freqs.weight"] = _llama3_rope_factors(theta, head_dim, scaling)
    elif rope_type != "default":
        raise GGUFExportError(f"GGUF export does not write rope scaling {rope_type!r}; convert this model with "
                              "llama.cpp's converter (converter='/path/to/llama.cpp' or "
                              "LLAMATELEMETRY_GGUF_CONVERTER).")
    return {"heads": heads, "kv_heads": kv_heads, "extra": extra}


def _weight_type(name: str, shape: tuple[int, ...], outtype: str) -> Any:
    """The ggml type a tensor is stored as; 1-D tensors (norms, biases) stay F32, as in llama.cpp's converter."""
    import gguf

    wanted = _file_type(outtype)[1]
    if len(shape) < 2 or name == "rope_freqs.weight":
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16  # a row Q8_0 cannot block: F16, as llama.cpp's converter does
    return wanted


def _encode(array: Any, qtype: Any) -> Any:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype("float32", copy=False)
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype("float16")
    return gguf.quants.quantize(array, qtype)


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(math.prod(shape) // block * size)


@contextlib.contextmanager
def _writing(destination: Path) -> Iterator[None]:
    """Turn an OSError of the GGUF writer (a full disk, a file size limit) into ``GGUFWriteError`` naming the output."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, GGUFWriteError):
            raise
        raise GGUFWriteError(str(destination), exc) from exc


def _write(source: _Source, target: Path, outtype: str, stage: PipelineStage,
           destination: Path | None = None) -> dict[str, Any]:
    """Write the GGUF file ``target`` (to be renamed ``destination``) from ``source``; return what the span reports."""
    import gguf
    import numpy as np

    output = destination or target

    architectures = list(source.config.get("architectures") or [])
    arch_class = architectures[0] if architectures else str(source.config.get("model_type") or "unknown")
    if arch_class not in _ARCHITECTURES:
        raise UnsupportedArchitectureError(arch_class, KNOWN_ARCHITECTURES)
    arch_name, permute = _ARCHITECTURES[arch_class]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    blocks = int(source.config["num_hidden_layers"])
    tensor_map = gguf.get_tensor_name_map(arch, blocks)
    tied = bool(source.config.get("tie_word_embeddings", False))
    torch = import_torch("convert_to_gguf")

    writer = gguf.GGUFWriter(target, arch_name)
    try:
        hparams = _add_hparams(writer, source.config, arch_name, outtype, source.name)
        vocab = add_vocab(writer, source.tokenizer_dir, int(source.config["vocab_size"]))
        # Pass 1: names, shapes and types for the header; pass 2 converts one tensor at a time.
        plan: list[tuple[str, str, tuple[int, ...], Any]] = []
        for key, value in source.tensors():
            if key.endswith(".rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                continue
            gguf_name = tensor_map.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFExportError(f"GGUF export does not know where the {arch_class} tensor {key!r} goes; "
                                      "convert this model with llama.cpp's converter (converter= or "
                                      "LLAMATELEMETRY_GGUF_CONVERTER).")
            shape = tuple(int(d) for d in value.shape)
            plan.append((key, gguf_name, shape, _weight_type(gguf_name, shape, outtype)))
        for extra_name, array in hparams["extra"].items():
            plan.append(("", extra_name, tuple(array.shape), gguf.GGMLQuantizationType.F32))
        # With raw_dtype given and a non-uint8 dtype, add_tensor_info takes the shape as the tensor's, not its bytes'.
        info_dtype = np.dtype(np.float32)
        for _, gguf_name, shape, qtype in plan:
            writer.add_tensor_info(gguf_name, shape, info_dtype, _nbytes(shape, qtype), raw_dtype=qtype)
        with _writing(output):
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        # The writer takes tensor data in the order of the header: the source's order, then the extra tensors.
        planned = {key: qtype for key, _, _, qtype in plan if key}
        for key, value in source.tensors():
            if key not in planned:
                continue
            array = value.detach().to(torch.float32).cpu().numpy()
            if permute and key.endswith("self_attn.q_proj.weight"):
                array = _permute(array, hparams["heads"])
            elif permute and key.endswith("self_attn.k_proj.weight"):
                array = _permute(array, hparams["kv_heads"])
            encoded = _encode(array, planned[key])
            with _writing(output):
                writer.write_tensor_data(encoded)
        for _, gguf_name, _, qtype in plan[len(planned):]:
            encoded = _encode(hparams["extra"][gguf_name], qtype)
            with _writing(output):
                writer.write_tensor_data(encoded)
    finally:
        writer.close()
    counts = Counter(qtype.name for _, _, _, qtype in plan)
    elements = sum(math.prod(shape) for _, _, shape, _ in plan)
    data_bytes = sum(_nbytes(shape, qtype) for _, _, shape, qtype in plan)
    return {"architecture": arch_name, "tensor_types": dict(counts), "tensors": len(plan),
            "bits_per_weight": data_bytes * 8 / elements if elements else None, "vocab": vocab}


# ------------------------------------------------------------------ the stage

def _staging_path(target: Path) -> Path:
    """A temporary name next to ``target`` (same filesystem, so the final rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


def export_gguf(model: Any, output_path: str | os.PathLike[str] | None = None, *, outtype: str | None = "f16",
                tokenizer: Any = None, ctx: PipelineContext | None = None, tracer: PipelineTracer | None = None,
                converter: str | os.PathLike[str] | None = None, quant_type: str | None = None,
                **options: Any) -> QuantizationResult:
    """Write ``model`` (a local folder, or a model object with ``tokenizer=``) to the GGUF file ``output_path``.

    ``outtype`` is ``f32``, ``f16`` (default), ``bf16`` or ``q8_0``. ``converter`` (or the
    ``LLAMATELEMETRY_GGUF_CONVERTER`` environment variable) names llama.cpp's ``convert_hf_to_gguf.py``
    or a llama.cpp checkout, run for architectures our writer does not know (``converter_first=True``:
    for every model).
    """
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer
    from llamatelemetry_transformers import gguf_convert_script

    kind = _normalise_outtype(quant_type if outtype is None else outtype)
    _require_gguf()
    converter_first = bool(options.pop("converter_first", False))
    if options:
        raise TypeError(f"convert_to_gguf got unexpected options: {', '.join(sorted(options))}")
    script = gguf_convert_script.find_converter(converter)
    is_folder = isinstance(model, (str, os.PathLike))
    folder = Path(model) if is_folder else None
    if output_path is None:
        if folder is None:
            raise ValueError("convert_to_gguf needs output_path= for a model object (where to write the .gguf file).")
        output_path = folder.parent / f"{folder.name}-{kind}.gguf"
    target = Path(output_path).resolve()
    context = ctx if ctx is not None else PipelineContext()
    tracer = tracer if tracer is not None else PipelineTracer()
    started = time.perf_counter()
    with tracer.span_export_gguf(context, **{names.QUANTIZATION_METHOD: METHOD,
                                             names.QUANTIZATION_TYPE: kind.upper()}) as stage, \
            tempfile.TemporaryDirectory(prefix="llamatelemetry-gguf-") as scratch:
        source = _from_folder(folder) if folder is not None else _from_object(model, tokenizer, Path(scratch))
        if context.base_model is None:
            context.base_model = source.name
        for path, file_kind in source.files:
            stage.add_input(path, file_kind)
        created = make_folders(target.parent)
        staging = _staging_path(target)
        architectures = list(source.config.get("architectures") or [])
        use_script = script is not None and (converter_first or not architectures
                                             or architectures[0] not in _ARCHITECTURES)
        try:
            written = time.perf_counter()
            if use_script:
                assert script is not None
                model_dir = source.folder
                if model_dir is None:  # llama.cpp's converter reads a folder: save the object next to its tokenizer
                    model_dir = Path(scratch)
                    model.save_pretrained(model_dir)
                    for path in tokenizer_files(source.tokenizer_dir):
                        if not (model_dir / path.name).exists():
                            shutil.copy2(path, model_dir / path.name)
                report = gguf_convert_script.run_converter(script, model_dir, staging, kind, stage)
                engine = _ENGINE_SCRIPT
            else:
                report = _write(source, staging, kind, stage, destination=target)
                engine = _ENGINE_WRITER
            report["duration"] = time.perf_counter() - written
            os.replace(staging, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            remove_folders(created)  # folders made for this output go too: a failed export leaves nothing
            raise
        size_before = sum(path.stat().st_size for path, file_kind in source.files if file_kind == "model_weights")
        if folder is None:
            size_before = sum(int(v.numel()) * int(v.element_size()) for v in model.state_dict().values())
        artifact = stage.add_output(target, "gguf_model", method=METHOD, quant_type=kind.upper(),
                                    engine=engine, tensor_types=report["tensor_types"])
        attributes: dict[str, Any] = {
            names.QUANTIZATION_SIZE_BEFORE: size_before, names.QUANTIZATION_SIZE_AFTER: artifact.size_bytes,
            names.QUANTIZATION_TENSORS: report["tensors"],
            names.QUANTIZATION_TENSOR_TYPES: [f"{t}={n}" for t, n in sorted(report["tensor_types"].items())],
            names.QUANTIZATION_ENGINE: engine, names.QUANTIZATION_FILE_TYPE: kind.upper(),
            GGUF_ARCHITECTURE: report["architecture"],
        }
        if report.get("bits_per_weight") is not None:
            attributes[names.QUANTIZATION_BITS_PER_WEIGHT] = round(float(report["bits_per_weight"]), 4)
        if report.get("duration") is not None:
            attributes[names.QUANTIZATION_DURATION] = report["duration"]
        vocab = report.get("vocab")
        if vocab is not None:
            attributes[GGUF_TOKENIZER] = vocab.model
            if vocab.pre:
                attributes[GGUF_TOKENIZER_PRE] = vocab.pre
        elif report.get("tokenizer"):
            attributes[GGUF_TOKENIZER] = report["tokenizer"]
        stage.set_attributes(attributes)
    return QuantizationResult(
        method=METHOD, quant_type=kind.upper(), output_path=str(target), size_before_bytes=size_before,
        size_after_bytes=artifact.size_bytes, duration_s=time.perf_counter() - started, artifacts=(artifact,),
        context=context, engine=engine, bits_per_weight=report.get("bits_per_weight"),
        tensor_types=dict(report["tensor_types"]))
