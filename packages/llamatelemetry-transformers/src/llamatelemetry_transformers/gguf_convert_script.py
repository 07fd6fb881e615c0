"""llama.cpp's own ``convert_hf_to_gguf.py``, run as a traced subprocess for architectures our writer does not know.

The user names it with ``converter=`` or the ``LLAMATELEMETRY_GGUF_CONVERTER`` environment variable:
the script itself, a llama.cpp checkout, or an unpacked llama-cpp-python sdist (which carries
llama.cpp under ``vendor/llama.cpp``). The script needs the ``gguf-py`` and ``conversion``
folders next to it (it puts its own ``gguf-py`` first on ``sys.path``; the PyPI ``gguf`` is too
old or too new for it), torch, numpy and transformers. It runs inside the ``export_gguf`` stage
span; the span's trace context goes to it in ``TRACEPARENT``, and its exit status and output
tail go on the span.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from llamatelemetry.quantization.gguf import GGUFExportError, UnsupportedArchitectureError
from llamatelemetry_transformers.semconv import GGUF_CONVERTER, GGUF_CONVERTER_EXIT_CODE

if TYPE_CHECKING:
    from llamatelemetry.pipeline.spans import PipelineStage

__all__ = ["ENV_CONVERTER", "find_converter", "run_converter"]

#: The environment variable naming llama.cpp's converter (the script, or the folder holding it).
ENV_CONVERTER: Final = "LLAMATELEMETRY_GGUF_CONVERTER"
SCRIPT_NAME: Final = "convert_hf_to_gguf.py"
_TAIL_LINES: Final = 20


def find_converter(converter: str | os.PathLike[str] | None = None) -> Path | None:
    """The converter script ``converter`` (or ``LLAMATELEMETRY_GGUF_CONVERTER``) names; ``None`` when neither is set."""
    named = os.fspath(converter) if converter is not None else os.environ.get(ENV_CONVERTER, "").strip()
    if not named:
        return None
    path = Path(named).expanduser()
    candidates = [path] if path.is_file() else [path / SCRIPT_NAME, path / "vendor" / "llama.cpp" / SCRIPT_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    origin = "converter=" if converter is not None else ENV_CONVERTER
    raise GGUFExportError(
        f"{origin} names {named!r}, where there is no {SCRIPT_NAME}: give the script's path, a llama.cpp checkout "
        "(git clone https://github.com/ggml-org/llama.cpp), or an unpacked llama-cpp-python sdist "
        "(pip download --no-deps --no-binary :all: llama-cpp-python, then tar xzf; it has vendor/llama.cpp).")


def _environment() -> dict[str, str]:
    """This process's environment plus the current trace context, so the converter can join the trace."""
    from opentelemetry import propagate

    env = dict(os.environ)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        env[key.upper()] = value
    env.pop("NO_LOCAL_GGUF", None)  # the script must use its own gguf-py, not the PyPI one
    return env


def run_converter(script: Path, model_dir: Path, output: Path, outtype: str, stage: PipelineStage) -> dict[str, Any]:
    """Run ``script`` on ``model_dir`` writing ``output``; return what the span and result report."""
    command = [sys.executable, str(script), str(model_dir), "--outfile", str(output), "--outtype", outtype]
    stage.set_attribute(GGUF_CONVERTER, str(script))
    completed = subprocess.run(command, capture_output=True, text=True, env=_environment(), check=False,
                               cwd=str(script.parent))
    stage.set_attribute(GGUF_CONVERTER_EXIT_CODE, completed.returncode)
    output_text = (completed.stdout or "") + (completed.stderr or "")
    if completed.returncode != 0:
        tail = "\n".join(output_text.strip().splitlines()[-_TAIL_LINES:])
        if "not supported" in output_text and "Model " in output_text:
            architecture = _architecture_of(model_dir)
            from llamatelemetry_transformers.gguf_export import KNOWN_ARCHITECTURES

            raise UnsupportedArchitectureError(architecture, KNOWN_ARCHITECTURES, converter_tried=True,
                                               converter_output=tail)
        raise GGUFExportError(f"llama.cpp's {SCRIPT_NAME} ({script}) failed with exit status {completed.returncode} "
                              f"converting {model_dir}:\n{tail}")
    if not output.is_file():
        raise GGUFExportError(f"llama.cpp's {SCRIPT_NAME} ({script}) exited 0 but wrote no {output}.")
    return _describe(output)


def _architecture_of(model_dir: Path) -> str:
    import json

    try:
        with open(model_dir / "config.json", encoding="utf-8") as handle:
            architectures = json.load(handle).get("architectures") or ["unknown"]
        return str(architectures[0])
    except (OSError, ValueError):
        return "unknown"


def _describe(path: Path) -> dict[str, Any]:
    """Architecture, tokenizer model and tensor counts by type of a GGUF file the converter wrote."""
    import math

    import gguf

    reader = gguf.GGUFReader(path)
    counts = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    elements = sum(math.prod(int(d) for d in tensor.shape) for tensor in reader.tensors)
    data_bytes = sum(int(tensor.n_bytes) for tensor in reader.tensors)

    def text(key: str) -> str | None:
        field = reader.get_field(key)
        return None if field is None else str(field.contents())

    return {"architecture": text("general.architecture") or "unknown", "tensor_types": dict(counts),
            "tensors": len(reader.tensors), "bits_per_weight": data_bytes * 8 / elements if elements else None,
            "tokenizer": text("tokenizer.ggml.model"), "vocab": None}
