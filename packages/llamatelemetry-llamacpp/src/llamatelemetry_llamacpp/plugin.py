"""Entry point of the llama.cpp plugin: what it registers with llamatelemetry."""

from __future__ import annotations

import argparse
from typing import Any

from llamatelemetry.plugins import BackendSpec, InstrumentorSpec, LoadDriverSpec, PresetSpec, StageSpec, hookimpl
from llamatelemetry_llamacpp.presets import PRESETS


@hookimpl
def llamatelemetry_register_backends() -> list[BackendSpec]:
    """``llama.cpp``: over a running server (``llama_server_url=``) or in-process (``model_path=``)."""
    return [BackendSpec(
        name="llama.cpp", aliases=("llamacpp", "llama_cpp", "llama-cpp"),
        factory="llamatelemetry_llamacpp.factory:create_backend", provider_name="llama_cpp",
        description="llama.cpp: a running server (llama_server_url=) or llama-cpp-python in-process (model_path=)",
    )]


@hookimpl
def llamatelemetry_register_instrumentors() -> list[InstrumentorSpec]:
    """``llama_cpp``: patch a user's ``llama_cpp.Llama`` or ``LlamaCppClient``."""
    return [InstrumentorSpec(
        name="llama_cpp", factory="llamatelemetry_llamacpp.instrument:instrument_llamacpp",
        uninstrument="llamatelemetry_llamacpp.instrument:uninstrument_llamacpp",
        description="spans and metrics on llama_cpp.Llama completion/chat calls and LlamaCppClient",
    )]


@hookimpl
def llamatelemetry_register_presets() -> list[PresetSpec]:
    """The llama.cpp server presets."""
    return [PresetSpec(name=name, values=dict(values), description=description)
            for name, (description, values) in PRESETS.items()]


@hookimpl
def llamatelemetry_register_load_drivers() -> list[LoadDriverSpec]:
    """The ``bench`` driver for llama.cpp: streams from a server (``--url``, or one it starts), reads its figures."""
    return [LoadDriverSpec(
        name="llama.cpp", factory="llamatelemetry_llamacpp.load:FACTORY",
        backends=("llama.cpp", "llamacpp", "llama_cpp", "llama-cpp"),
        description="streams from a llama.cpp server and reads its /metrics and /slots",
    )]


@hookimpl
def llamatelemetry_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``llamatelemetry demo`` (a real instrumented llama.cpp inference) and ``llamatelemetry quantize`` (GGUF)."""
    from llamatelemetry_llamacpp import demo, quantize_cli

    demo.add_parser(subparsers)
    quantize_cli.add_parser(subparsers)


@hookimpl
def llamatelemetry_register_stages() -> list[StageSpec]:
    """``quantize:gguf``: llama.cpp's quantizer in-process (llama-cpp-python), or the gguf package's for Q8_0/Q4_0."""
    return [StageSpec(
        name="gguf", kind="quantize", factory="llamatelemetry_llamacpp.quantize:quantize_gguf",
        description="GGUF quantization (Q4_K_M, Q8_0, ...) of a GGUF file or an exported Hugging Face model",
    )]
