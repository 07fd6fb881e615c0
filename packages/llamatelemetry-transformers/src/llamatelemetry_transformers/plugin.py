"""Entry point of the transformers plugin: what it registers with llamatelemetry.

Importing this module imports neither torch nor transformers: the records name what to import
when a user asks for it. The torch GPU enricher's request hooks are registered only once CUDA is in
use in the process (``gpu.enable_request_hooks``), so requests elsewhere pay no hook call for it.
"""

from __future__ import annotations

from llamatelemetry.plugins import BackendSpec, InstrumentorSpec, StageSpec, hookimpl
from llamatelemetry_transformers import gpu


@hookimpl
def llamatelemetry_register_backends() -> list[BackendSpec]:
    """``transformers``: a Hugging Face causal LM in this process (``model_path=`` or ``model=``/``tokenizer=``)."""
    return [BackendSpec(
        name="transformers", aliases=("hf", "huggingface"),
        factory="llamatelemetry_transformers.factory:create_backend", provider_name="transformers",
        description="Hugging Face transformers in-process: a save_pretrained folder (model_path=) or your "
                    "model= and tokenizer=",
    )]


@hookimpl
def llamatelemetry_register_instrumentors() -> list[InstrumentorSpec]:
    """``transformers``: patch a user's model ``generate`` (or text-generation pipeline)."""
    return [InstrumentorSpec(
        name="transformers", factory="llamatelemetry_transformers.instrument:instrument_transformers",
        uninstrument="llamatelemetry_transformers.instrument:uninstrument_transformers",
        description="spans and metrics on a transformers model's generate() and text-generation pipelines",
    )]


@hookimpl
def llamatelemetry_register_stages() -> list[StageSpec]:
    """``quantize:dynamic`` (torch int8, CPU), ``quantize:nf4`` (bitsandbytes 4-bit) and ``export:gguf``."""
    return [
        StageSpec(name="dynamic", kind="quantize", factory="llamatelemetry_transformers.quantize:quantize_dynamic",
                  description="torch dynamic int8 quantization of nn.Linear layers (CPU)"),
        StageSpec(name="nf4", kind="quantize", factory="llamatelemetry_transformers.quantize:quantize_nf4",
                  description="bitsandbytes 4-bit NF4/FP4 quantization (NVIDIA GPU, or the CPU with device_map='cpu')"),
        StageSpec(name="gguf", kind="export", factory="llamatelemetry_transformers.gguf_export:export_gguf",
                  description="a Hugging Face causal LM (Llama, Mistral, Qwen2) written to GGUF as f32/f16/bf16/q8_0; "
                              "other architectures through llama.cpp's convert_hf_to_gguf.py"),
    ]


@hookimpl
def llamatelemetry_telemetry_start() -> None:
    """The torch GPU enricher's request hooks, when CUDA is already in use (else when a model first runs on it)."""
    gpu.enable_request_hooks()
