"""GGUF quantization, traced: ``quantize_gguf`` runs llama.cpp's own quantizer in-process, or the gguf package's.

The llama.cpp plugin registers it as the ``quantize`` stage ``gguf`` (hook
``llamatelemetry_register_stages``), so ``QuantizationPipeline().run(model, "model-q4.gguf",
quant_type="Q4_K_M")`` finds it. The input is a GGUF file, or a Hugging Face model (a local folder,
or a model object with ``tokenizer=``) that the registered ``export`` stage ``gguf`` writes to a
temporary F16 GGUF beside the output first (removed afterwards; with ``keep_intermediate`` it is
written as ``<output stem>-f16.gguf`` and kept). Missing output folders are created, and removed
again if the stage fails.

Two quantizers:

- ``llama.cpp`` (llama-cpp-python's ``llama_model_quantize``, the same code as ``llama-quantize``):
  every type the installed llama.cpp defines (``supported_types()``: Q8_0, Q6_K, Q5_K_M, Q4_K_M,
  Q4_0, IQ*, ...), with llama.cpp's per-tensor mixes (Q4_K_M keeps some weights at Q6_K).
- ``gguf-py`` (the ``gguf`` package's numpy quantizers), used when llama-cpp-python is missing or
  ``engine="gguf-py"``: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the float types, every 2-D weight to the
  asked type (llama.cpp's ``--pure``). It has no K-quants.

K-quants pack 256 values per block, so a weight whose rows are not a multiple of 256 wide cannot be
stored in them: llama.cpp then uses another type for it (Q4_K -> Q5_0, Q6_K -> Q8_0, ...) and only
logs it. The stage reads the written file back (``gguf.GGUFReader``), checks ``general.file_type``
is the asked type, counts tensors by type and lists the weights held in a type outside the asked
one's family because of their shape (``QuantizationResult.fallback_tensors``, also on the span).

The file is written beside the output under a temporary name and renamed when complete: a failed
stage (an ERROR span) leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from llamatelemetry.artifacts import make_folders, remove_folders
from llamatelemetry.errors import LlamaTelemetryError
from llamatelemetry.pipeline import attributes as names
from llamatelemetry.quantization.stages import QuantizationResult
from llamatelemetry_llamacpp.gguf_file import check_gguf_file

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineStage, PipelineTracer

__all__ = [
    "ENGINE_GGUF_PY",
    "ENGINE_LLAMA_CPP",
    "INSTALL_LLAMA_CPP",
    "PYTHON_TYPES",
    "INSTALL_GGUF",
    "GGUFFacts",
    "GGUFPackageMissingError",
    "GGUFQuantizeError",
    "QuantizeFailedError",
    "QuantizeInputError",
    "QuantizeWriteError",
    "QuantizerNotInstalledError",
    "UnknownQuantTypeError",
    "check_quant_type",
    "quantize_gguf",
    "read_gguf_facts",
    "supported_types",
]

log = logging.getLogger("llamatelemetry.llama_cpp.quantize")

ENGINE_LLAMA_CPP: Final = "llama.cpp"
ENGINE_GGUF_PY: Final = "gguf-py"
#: How to get llama.cpp's quantizer: a source build; GGML_NATIVE=OFF avoids CPU paths that crash on some machines.
INSTALL_LLAMA_CPP: Final = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python'
INSTALL_GGUF: Final = 'pip install "llamatelemetry-llamacpp[quantize]"'
#: What the gguf package's Python quantizers produce (file types, as llama.cpp names them).
PYTHON_TYPES: Final = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
_K_BLOCK: Final = 256
_EXPORT_OUTTYPE: Final = "f16"
_MAX_NAMES_ON_SPAN: Final = 64
_GGML_LOG_ERROR: Final = 4  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
# What llama.cpp's file writer logs when the device is full or the file may not grow.
_WRITE_FAILED: Final = re.compile(r"no space left|file too large|disk quota|write error|iostream error",
                                  re.IGNORECASE)


# ------------------------------------------------------------------ errors

class GGUFQuantizeError(LlamaTelemetryError):
    """Base class of the GGUF quantize stage's errors."""


class UnknownQuantTypeError(GGUFQuantizeError, ValueError):
    """The asked type is not one the quantizer that would run can produce."""

    def __init__(self, quant_type: str, supported: tuple[str, ...], engine: str) -> None:
        self.quant_type = quant_type
        self.supported = supported
        more = (f" (llama.cpp's quantizer makes K-quants and more: {INSTALL_LLAMA_CPP})"
                if engine == ENGINE_GGUF_PY else "")
        super().__init__(f"{quant_type!r} is not a GGUF type {engine} can produce. Use one of: "
                         f"{', '.join(supported)}{more}.")


class QuantizerNotInstalledError(GGUFQuantizeError, ImportError):
    """The asked type needs llama.cpp's quantizer (llama-cpp-python), which is not installed."""

    def __init__(self, quant_type: str) -> None:
        self.install_command = INSTALL_LLAMA_CPP
        super().__init__(
            f"{quant_type} needs llama.cpp's quantizer, and llama-cpp-python is not installed (the gguf package's "
            f"Python quantizers make only {', '.join(PYTHON_TYPES)}). Install it with: {INSTALL_LLAMA_CPP}",
            name="llama_cpp")


class GGUFPackageMissingError(GGUFQuantizeError, ImportError):
    """The gguf package (and numpy), which the stage reads, checks and writes GGUF files with, is not installed."""

    def __init__(self) -> None:
        self.install_command = INSTALL_GGUF
        super().__init__(f"GGUF quantization reads and checks GGUF files with the gguf package, which is not "
                         f"installed. Install it with: {INSTALL_GGUF}", name="gguf")


class QuantizeInputError(GGUFQuantizeError, FileNotFoundError):
    """The input is neither a GGUF file nor a model folder (missing, or something else)."""

    def __init__(self, path: str, reason: str, advice: str | None = None) -> None:
        self.path = path
        advice = advice or ("Give a .gguf file, or a Hugging Face model folder (written by save_pretrained) to "
                            "export first.")
        super().__init__(errno.ENOENT, f"Cannot quantize {path}: {reason}. {advice}")

    def __str__(self) -> str:
        return str(self.strerror)


class QuantizeFailedError(GGUFQuantizeError, RuntimeError):
    """llama.cpp's quantizer returned an error (its own log lines are in the message)."""


class QuantizeWriteError(GGUFQuantizeError, OSError):
    """Writing the output failed (no space left, no permission, ...); nothing is left at the output path."""

    def __init__(self, path: str, cause: OSError) -> None:
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "the disk is full: free space there or write elsewhere (-o / output_path)"
        elif cause.errno == errno.ENOTDIR:
            what = f"{cause.filename or 'a part of the path'} is a file, not a folder: choose another output path"
        elif cause.errno == errno.EFBIG:
            what = "the file is larger than this system lets it grow (ulimit -f, or the filesystem's limit)"
        else:
            what = (f"the disk may be full or the file may not grow there: check free space "
                    f"({_free_mib(Path(path).parent)}), file size limits (ulimit -f) and that the folder is writable")
        super().__init__(cause.errno or errno.EIO, f"Could not write {path} ({cause.strerror or cause}): {what}.")

    def __str__(self) -> str:
        return str(self.strerror)


def _free_mib(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free"
    except OSError:
        return "free space unknown"


# ------------------------------------------------------------------ what a GGUF file holds

@attrs.frozen
class GGUFFacts:
    """What a GGUF file says about itself: its file type, size and tensors (read with ``gguf.GGUFReader``)."""

    path: str
    size_bytes: int
    #: ``general.file_type`` as llama.cpp names it (``Q4_K_M``, ``F16``), ``None`` if the file has none.
    file_type: str | None
    architecture: str | None
    tensor_types: Mapping[str, int]
    #: (name, type name, row width, dimensions) of every tensor.
    tensors: tuple[tuple[str, str, int, int], ...]
    n_elements: int
    n_bytes: int

    @property
    def bits_per_weight(self) -> float | None:
        """Bits per weight over all tensors, as llama.cpp reports it (``None`` for a file without tensors)."""
        return self.n_bytes * 8 / self.n_elements if self.n_elements else None


def _file_type_name(value: int) -> str | None:
    import gguf

    try:
        name = str(gguf.LlamaFileType(value).name)
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_gguf_facts(path: str | os.PathLike[str]) -> GGUFFacts:
    """Read a GGUF file's type, architecture and tensors (header and tensor table only; data is memory-mapped)."""
    import gguf

    reader = gguf.GGUFReader(os.fspath(path), "r")
    file_type = reader.fields.get("general.file_type")
    arch = reader.fields.get("general.architecture")
    tensors = tuple((t.name, t.tensor_type.name, int(t.shape[0]) if len(t.shape) else 1, len(t.shape))
                    for t in reader.tensors)
    return GGUFFacts(
        path=os.fspath(path), size_bytes=os.path.getsize(path),
        file_type=_file_type_name(int(file_type.contents())) if file_type is not None else None,
        architecture=str(arch.contents()) if arch is not None else None,
        tensor_types=dict(sorted(Counter(kind for _, kind, _, _ in tensors).items())),
        tensors=tensors, n_elements=sum(int(t.n_elements) for t in reader.tensors),
        n_bytes=sum(int(t.n_bytes) for t in reader.tensors))


# ------------------------------------------------------------------ types and engines

def _import_llama_cpp() -> Any | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


def _llama_cpp_types(llama_cpp: Any) -> dict[str, int]:
    """The file types the installed llama.cpp defines (its ``LLAMA_FTYPE_*`` constants)."""
    types: dict[str, int] = {}
    for attr in dir(llama_cpp):
        for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"):
            if attr.startswith(prefix):
                types[attr.removeprefix(prefix)] = int(getattr(llama_cpp, attr))
    return types


def _ordered(types: Mapping[str, int]) -> tuple[str, ...]:
    return tuple(name for name, _ in sorted(types.items(), key=lambda item: item[1]))


def supported_types(engine: str | None = None) -> tuple[str, ...]:
    """The GGUF types ``engine`` (default: llama.cpp if installed, else gguf-py) can produce, in llama.cpp's order."""
    chosen = engine or (ENGINE_LLAMA_CPP if _import_llama_cpp() is not None else ENGINE_GGUF_PY)
    if chosen == ENGINE_GGUF_PY:
        return PYTHON_TYPES
    llama_cpp = _import_llama_cpp()
    if llama_cpp is None:
        raise QuantizerNotInstalledError("llama.cpp's type list")
    return _ordered(_llama_cpp_types(llama_cpp))


def _pick_engine(quant_type: str, engine: str) -> tuple[str, Any | None]:
    """Which quantizer runs for ``quant_type`` (and the llama_cpp module when it is llama.cpp's)."""
    if engine not in ("auto", ENGINE_LLAMA_CPP, ENGINE_GGUF_PY):
        raise ValueError(f"engine={engine!r}: use 'auto', {ENGINE_LLAMA_CPP!r} or {ENGINE_GGUF_PY!r}.")
    llama_cpp = _import_llama_cpp() if engine != ENGINE_GGUF_PY else None
    if llama_cpp is not None:
        known = _llama_cpp_types(llama_cpp)
        if quant_type not in known:
            raise UnknownQuantTypeError(quant_type, _ordered(known), ENGINE_LLAMA_CPP)
        return ENGINE_LLAMA_CPP, llama_cpp
    if engine == ENGINE_LLAMA_CPP:
        raise QuantizerNotInstalledError(quant_type)
    if quant_type in PYTHON_TYPES:
        return ENGINE_GGUF_PY, None
    import gguf

    if quant_type in {_file_type_name(int(v)) for v in gguf.LlamaFileType} and engine == "auto":
        raise QuantizerNotInstalledError(quant_type)
    raise UnknownQuantTypeError(quant_type, PYTHON_TYPES, ENGINE_GGUF_PY)


def _family(quant_type: str, engine: str) -> tuple[frozenset[str], int]:
    """The tensor types a file of ``quant_type`` holds by design, and the widest block among them.

    llama.cpp's mixes keep some weights in other types on purpose (Q4_K_M has Q6_K; Q4_0 keeps
    the output at Q6_K; IQ types use K-quants): a weight outside this family, in a row width the
    family's widest block does not divide, is a shape fallback.
    """
    import gguf

    base = quant_type.split("_")[0] + ("_" + quant_type.split("_")[1] if "_" in quant_type else "")
    members = {base} if base in gguf.GGMLQuantizationType.__members__ else set()
    if engine == ENGINE_LLAMA_CPP and quant_type not in ("F32", "F16", "BF16", "Q8_0"):
        members |= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}
        if quant_type.startswith("IQ"):  # IQ4_NL is what the IQ types fall back to, unless it was asked for
            members |= {name for name in gguf.GGMLQuantizationType.__members__
                        if name.startswith("IQ") and (name != "IQ4_NL" or base == name)}
    blocks = [gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0] for name in members]
    return frozenset(members), max(blocks, default=1)


def _fallbacks(facts: GGUFFacts, quant_type: str, engine: str) -> tuple[str, ...]:
    family, block = _family(quant_type, engine)
    if not family or quant_type in ("F32", "F16", "BF16"):
        return ()
    return tuple(name for name, kind, width, dims in facts.tensors
                 if dims >= 2 and kind not in family and width % block != 0)


# ------------------------------------------------------------------ the two quantizers

@contextlib.contextmanager
def _llama_log_captured(llama_cpp: Any) -> Iterator[list[tuple[int, str]]]:
    """Route llama.cpp's log to a list for the block (and to this module's logger at debug), then restore it."""
    lines: list[tuple[int, str]] = []

    def collect(level: int, text: bytes | None, user_data: Any) -> None:
        if text:
            lines.append((level, text.decode("utf-8", "replace")))

    callback = llama_cpp.llama_log_callback(collect)
    previous, previous_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(previous, previous_data)
        if log.isEnabledFor(logging.DEBUG):
            for line in "".join(text for _, text in lines).splitlines():
                log.debug("llama.cpp: %s", line)


def _run_llama_cpp(llama_cpp: Any, source: Path, target: Path, quant_type: str, nthread: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _llama_cpp_types(llama_cpp)[quant_type]
    params.nthread = nthread
    with _llama_log_captured(llama_cpp) as lines:
        status = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
    if status != 0:
        # llama.cpp says why only in its log: ggml's GGML_LOG_LEVEL_ERROR, or "failed to quantize: ...".
        errors = [text.strip() for level, text in lines
                  if text.strip() and (level == _GGML_LOG_ERROR or "failed to quantize" in text)]
        said = "; ".join(errors[-3:]) or "llama.cpp logged no reason"
        failed = _WRITE_FAILED.search(said)
        if failed is not None:  # the caller turns it into QuantizeWriteError naming the output
            # llama.cpp's writer (a C++ stream) often says only "iostream error": no errno to pass on.
            code = {"no space left": errno.ENOSPC, "disk quota": errno.EDQUOT,
                    "file too large": errno.EFBIG}.get(failed.group(0).lower(), errno.EIO)
            raise OSError(code, f"llama.cpp's file writer failed: {said}")
        raise QuantizeFailedError(f"llama.cpp could not quantize {source} to {quant_type} (status {status}): {said}")


def _run_gguf_py(source: Path, target: Path, quant_type: str) -> None:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(os.fspath(source), "r")
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise QuantizeFailedError(f"{source} has no general.architecture: it is not a model GGUF llama.cpp loads.")
    writer = gguf.GGUFWriter(os.fspath(target), str(arch_field.contents()))
    skip = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in skip:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType[("ALL_" if quant_type == "F32" else "MOSTLY_") + quant_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    qtype = gguf.GGMLQuantizationType[quant_type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for tensor in reader.tensors:
        width = int(tensor.shape[0]) if len(tensor.shape) else 1
        if len(tensor.shape) < 2 or width % block != 0:  # norms stay F32; odd rows keep their type (a fallback)
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        values = values.reshape(tuple(int(n) for n in reversed(tensor.shape)))
        if qtype in float_types:
            writer.add_tensor(tensor.name, values.astype(np.float16 if qtype == float_types[1] else np.float32))
        else:
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ------------------------------------------------------------------ the stage

def _temp_beside(target: Path, label: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{label}.part", dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes it private; a model file is ordinary data
    return Path(name)


def _kept_intermediate_path(target: Path, outtype: str) -> Path:
    """Where a kept export goes: ``<output stem>-<outtype>.gguf`` beside the output (model-q4-f16.gguf)."""
    return target.with_name(f"{target.stem}-{outtype.lower()}.gguf")


def _fail_stage(tracer: PipelineTracer, context: PipelineContext, error: Exception,
                attributes: Mapping[str, Any]) -> None:
    """Open the quantize span and end it with ``error`` (status ERROR, ``error.type``) without running anything."""
    try:
        with tracer.span_quantize(context, **attributes):
            raise error
    except Exception as raised:
        if raised is not error:
            raise


def _normalized(quant_type: str | None) -> str:
    if not quant_type or not isinstance(quant_type, str):
        raise ValueError("quantize_gguf needs quant_type=, a GGUF type such as 'Q4_K_M' or 'Q8_0'.")
    return quant_type.strip().upper()


def _checked(quant_type: str | None, engine: str) -> tuple[str, str, Any | None]:
    """(the normalized type, the engine that would make it, the llama_cpp module when it is llama.cpp's)."""
    kind = _normalized(quant_type)
    try:
        import gguf  # noqa: F401  (checked here so a missing package is one clear error before any work)
        import numpy  # noqa: F401
    except ImportError as exc:
        raise GGUFPackageMissingError() from exc
    chosen, llama_cpp = _pick_engine(kind, engine)
    return kind, chosen, llama_cpp


def check_quant_type(quant_type: str | None, engine: str = "auto") -> str:
    """The normalized ``quant_type`` if the installed quantizer can make it, else the error ``quantize_gguf`` raises.

    For callers that do work before quantizing (an export first) and want to fail before it:
    ``UnknownQuantTypeError`` (with the types it can make), ``QuantizerNotInstalledError`` (a
    K-quant without llama-cpp-python, with the install command) or ``GGUFPackageMissingError``.
    """
    return _checked(quant_type, engine)[0]


def _is_gguf_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def _source_of(model: Any) -> tuple[Path | None, Any]:
    """(the GGUF to quantize, None) or (None, the model or folder to export first)."""
    if not isinstance(model, (str, os.PathLike)):
        return None, model
    path = Path(model)
    if path.is_file():
        if not _is_gguf_file(path):
            raise QuantizeInputError(str(path), "it is not a GGUF file (no GGUF magic)")
        return path, None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QuantizeInputError(str(path), "the folder has no config.json")
        return None, path
    raise QuantizeInputError(str(path), "no such file or folder")


def _default_output(source: Path | None, model: Any, quant_type: str) -> Path:
    if source is not None:
        return source.with_name(f"{source.stem.removesuffix('-f16').removesuffix('-f32')}-{quant_type.lower()}.gguf")
    if isinstance(model, (str, os.PathLike)):
        return Path(model).with_name(f"{Path(model).name}-{quant_type.lower()}.gguf")
    raise ValueError("quantize_gguf needs output_path= when the model is an object, e.g. output_path='model-q4.gguf'.")


def _export(model: Any, target: Path, outtype: str, ctx: PipelineContext, tracer: PipelineTracer,
            options: dict[str, Any]) -> Path:
    """Export ``model`` to the GGUF file ``target`` with the registered ``export`` stage ``gguf``."""
    from llamatelemetry.quantization.pipeline import find_stage

    stage = find_stage("export", "gguf").load()
    stage(model, target, outtype=outtype, ctx=ctx, tracer=tracer, **options)
    return target


def _record(stage: PipelineStage, facts: GGUFFacts, fallbacks: tuple[str, ...], quant_seconds: float) -> None:
    attributes: dict[str, Any] = {
        names.QUANTIZATION_FILE_TYPE: facts.file_type or "unknown",
        names.QUANTIZATION_SIZE_AFTER: facts.size_bytes,
        names.QUANTIZATION_TENSORS: len(facts.tensors),
        names.QUANTIZATION_TENSOR_TYPES: [f"{kind}={count}" for kind, count in facts.tensor_types.items()],
        names.QUANTIZATION_FALLBACK_TENSORS: len(fallbacks),
        names.QUANTIZATION_DURATION: quant_seconds,
    }
    if facts.bits_per_weight is not None:
        attributes[names.QUANTIZATION_BITS_PER_WEIGHT] = round(facts.bits_per_weight, 4)
    if fallbacks:
        attributes[names.QUANTIZATION_FALLBACK_NAMES] = list(fallbacks[:_MAX_NAMES_ON_SPAN])
    stage.set_attributes(attributes)


def quantize_gguf(model: Any, output_path: str | os.PathLike[str] | None = None, *, quant_type: str | None = "Q4_K_M",
                  ctx: PipelineContext | None = None, tracer: PipelineTracer | None = None, engine: str = "auto",
                  nthread: int = 0, keep_intermediate: bool = False, outtype: str = _EXPORT_OUTTYPE,
                  overwrite: bool = True, **export_options: Any) -> QuantizationResult:
    """Quantize a GGUF file, or a Hugging Face model exported first, to the GGUF type ``quant_type``.

    ``engine`` is ``"auto"`` (llama.cpp if llama-cpp-python is installed, else the gguf package),
    ``"llama.cpp"`` or ``"gguf-py"``; ``nthread`` the quantizer's threads (0: all cores). A model
    folder or object is exported with the ``export`` stage ``gguf`` (``outtype``, default f16, and
    ``export_options`` such as ``tokenizer=``) to a temporary file beside the output and removed
    afterwards; with ``keep_intermediate`` it is written as ``<output stem>-<outtype>.gguf`` beside
    the output (``model-q4-f16.gguf``) and kept (``overwrite`` covers it as it does the output).
    Missing output folders are created (and removed if the stage fails). Returns a
    ``QuantizationResult`` with the bits per weight, tensors by type and the fallback weights.
    """
    from llamatelemetry.pipeline.spans import PipelineContext, PipelineTracer

    context = ctx if ctx is not None else PipelineContext()
    tracer = tracer if tracer is not None else PipelineTracer()
    created: list[Path] = []
    try:  # before any work: bad input fails fast, as an ERROR quantize span like any other failed stage
        kind, chosen, llama_cpp = _checked(quant_type, engine)
        source, to_export = _source_of(model)
        target = Path(output_path) if output_path is not None else _default_output(source, to_export, kind)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"output_path {target} is a folder: give a file path such as "
                                                  f"{target / 'model-q4_k_m.gguf'}.")
        if source is not None and target.resolve() == source.resolve():
            raise ValueError(f"output_path is the input file {source}: write the quantized model to another path.")
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists: remove it, choose another output path, or pass overwrite=True.")
        kept = _kept_intermediate_path(target, outtype) if source is None and keep_intermediate else None
        if kept is not None and kept.exists() and not overwrite:
            raise FileExistsError(f"{kept} exists (keep_intermediate=True keeps the {outtype.upper()} export there): "
                                  "remove it, choose another output path, or pass overwrite=True.")
        try:
            created = make_folders(target.parent)
        except OSError as exc:
            raise QuantizeWriteError(str(target), exc) from exc
    except Exception as exc:
        remove_folders(created)
        attributes: dict[str, Any] = {names.QUANTIZATION_METHOD: "gguf"}
        if isinstance(quant_type, str) and quant_type.strip():
            attributes[names.QUANTIZATION_TYPE] = quant_type.strip().upper()
        if engine != "auto":  # which quantizer would have run is not known yet
            attributes[names.QUANTIZATION_ENGINE] = engine
        _fail_stage(tracer, context, exc, attributes)
        raise
    if context.base_model is None:
        label = source if source is not None else to_export if isinstance(to_export, (str, os.PathLike)) else None
        context.base_model = Path(label).stem if label is not None else getattr(to_export, "name_or_path", None)

    started = time.perf_counter()
    intermediate: Path | None = None
    try:
        if source is None:
            # A kept export is written under its final name (the export stage writes it atomically and records
            # that path in the manifest); one to remove goes under a hidden temporary name.
            intermediate = kept if kept is not None else _temp_beside(target, outtype.lower())
            source = _export(to_export, intermediate, outtype, context, tracer, export_options)
        result = _quantize_file(source, target, kind, chosen, llama_cpp, nthread, context, tracer, started)
    except BaseException:
        if intermediate is not None and kept is None:
            intermediate.unlink(missing_ok=True)
        remove_folders(created)  # those it made, where empty: a complete kept export stays, with its folders
        raise
    if intermediate is not None and kept is None:
        intermediate.unlink(missing_ok=True)
    if intermediate is not None and keep_intermediate:
        result = attrs.evolve(result, intermediate_path=str(intermediate))
    return result


def _quantize_file(source: Path, target: Path, kind: str, engine: str, llama_cpp: Any, nthread: int,
                   context: PipelineContext, tracer: PipelineTracer, started: float) -> QuantizationResult:
    with tracer.span_quantize(context, **{names.QUANTIZATION_METHOD: "gguf", names.QUANTIZATION_TYPE: kind,
                                          names.QUANTIZATION_ENGINE: engine}) as stage:
        check_gguf_file(source)  # a truncated or damaged file gets a specific error, not the reader's
        before = read_gguf_facts(source)
        stage.set_attributes({names.QUANTIZATION_SOURCE_TYPE: before.file_type or "unknown",
                              names.QUANTIZATION_SIZE_BEFORE: before.size_bytes})
        stage.add_input(source, "gguf_model", file_type=before.file_type)
        partial = _temp_beside(target, kind.lower())
        try:
            began = time.perf_counter()
            try:
                if engine == ENGINE_LLAMA_CPP:
                    _run_llama_cpp(llama_cpp, source, partial, kind, nthread)
                else:
                    _run_gguf_py(source, partial, kind)
            except OSError as exc:
                raise QuantizeWriteError(str(target), exc) from exc
            quant_seconds = time.perf_counter() - began
            facts = read_gguf_facts(partial)
            if facts.file_type != kind:
                raise QuantizeFailedError(f"{engine} wrote general.file_type {facts.file_type} for {kind}: the output "
                                          "is not what was asked for, so it was not kept.")
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        facts = attrs.evolve(facts, path=str(target))
        fallbacks = _fallbacks(facts, kind, engine)
        _record(stage, facts, fallbacks, quant_seconds)
        if fallbacks:
            log.warning("%d of %d tensors of %s are not %s: their rows are not a multiple of the type's block "
                        "(K-quants need 256), so they were stored as another type: %s", len(fallbacks),
                        len(facts.tensors), target, kind, ", ".join(fallbacks[:8]) + (" ..." if len(fallbacks) > 8
                                                                                     else ""))
        stage.add_output(target, "gguf_model", method="gguf", quant_type=kind, engine=engine,
                         bits_per_weight=facts.bits_per_weight, fallback_tensors=len(fallbacks))
    return QuantizationResult(
        method="gguf", quant_type=kind, output_path=str(target.resolve()), size_before_bytes=before.size_bytes,
        size_after_bytes=facts.size_bytes, duration_s=time.perf_counter() - started,
        artifacts=tuple(stage.outputs), context=context, engine=engine, bits_per_weight=facts.bits_per_weight,
        tensor_types=dict(facts.tensor_types), fallback_tensors=fallbacks)
