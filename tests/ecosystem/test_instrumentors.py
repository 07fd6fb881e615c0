"""The BaseInstrumentor adapters in process: instrument/uninstrument, the extras the loader reads, an absent library."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.instrumentation")

from opentelemetry.instrumentation.dependencies import get_dependency_conflicts, get_dist_dependency_conflicts

from llamatelemetry.testing import InMemoryTelemetry
from llamatelemetry_llamacpp import telemetry as client_telemetry
from llamatelemetry_llamacpp.instrument import is_instrumented
from llamatelemetry_llamacpp.otel_instrumentor import LlamaCppClientInstrumentor, LlamaCppInstrumentor
from llamatelemetry_transformers.otel_instrumentor import TransformersInstrumentor


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """llamatelemetry with in-memory exporters."""
    with InMemoryTelemetry() as t:
        yield t


def test_entry_points_name_the_adapters_and_the_loader_finds_no_conflict() -> None:
    """Each entry point loads its class; the distributions' instruments extras are satisfied here."""
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}
    assert found["llamatelemetry_llama_cpp"].load() is LlamaCppInstrumentor
    assert found["llamatelemetry_llamacpp_client"].load() is LlamaCppClientInstrumentor
    assert found["llamatelemetry_transformers"].load() is TransformersInstrumentor
    for dist in ("llamatelemetry-llamacpp", "llamatelemetry-transformers"):
        assert get_dist_dependency_conflicts(distribution(dist)) is None
    for instrumentor in (LlamaCppInstrumentor(), LlamaCppClientInstrumentor(), TransformersInstrumentor()):
        assert get_dependency_conflicts(instrumentor.instrumentation_dependencies()) is None
    # What the loader reports for a library that is not installed: a conflict, logged at debug level only.
    conflict = get_dependency_conflicts(["llamatelemetry-no-such-library >= 1"])
    assert conflict is not None and not conflict._is_version_conflict


def test_without_llama_cpp_the_llama_instrumentor_raises_what_the_loader_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    """No llama_cpp: ModuleNotFoundError, which opentelemetry-instrument's loader skips quietly; nothing is patched."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ModuleNotFoundError):
        LlamaCppInstrumentor().instrument(skip_dep_check=True)
    assert not LlamaCppInstrumentor()._is_instrumented_by_opentelemetry


def test_llama_instrumentor_instruments_new_models_and_undoes_it(tiny_gguf: Path, telemetry: InMemoryTelemetry) -> None:
    """Models made while on are instrumented; uninstrument restores Llama.__init__ and those models."""
    llama_cpp = pytest.importorskip("llama_cpp")
    init = llama_cpp.Llama.__dict__["__init__"]
    instrumentor = LlamaCppInstrumentor()
    instrumentor.instrument()
    try:
        llm = llama_cpp.Llama(str(tiny_gguf), n_ctx=64, n_threads=1, verbose=False)
        assert is_instrumented(llm)
        llm.create_completion("Hi", max_tokens=1)
        assert [s.name for s in telemetry.spans()] == ["text_completion tiny-llama"]
    finally:
        instrumentor.uninstrument()
    assert llama_cpp.Llama.__dict__["__init__"] is init
    assert not is_instrumented(llm)
    assert not is_instrumented(llama_cpp.Llama(str(tiny_gguf), n_ctx=64, n_threads=1, verbose=False))


def test_client_instrumentor_and_the_environment_switch_client_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """uninstrument()/instrument() turn the client's recording off/on; the variable turns it off by name."""
    instrumentor = LlamaCppClientInstrumentor()
    try:
        instrumentor.instrument()
        monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "llamatelemetry_llamacpp_client")
        assert client_telemetry.client_recording_enabled()  # an explicit instrument() wins
        instrumentor.uninstrument()
        assert not client_telemetry.client_recording_enabled()
    finally:
        client_telemetry.set_client_recording(None)
    assert not client_telemetry.client_recording_enabled()
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "requests, flask")
    assert client_telemetry.client_recording_enabled()


def test_transformers_instrumentor_records_generate_and_undoes_it(telemetry: InMemoryTelemetry, tmp_path: Path) -> None:
    """generate on any model is recorded while on; the model stays picklable; uninstrument restores generate."""
    import pickle

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation.utils import GenerationMixin

    from llamatelemetry_transformers.testing import build_tiny_model, train_tiny_tokenizer

    torch.set_num_threads(1)
    tokenizer = train_tiny_tokenizer()
    model: Any = build_tiny_model(tokenizer)
    model.name_or_path = "zero-code-tiny"
    generate = GenerationMixin.__dict__["generate"]
    instrumentor = TransformersInstrumentor()
    instrumentor.instrument()
    try:
        model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=2, do_sample=False)
        pickle.dumps(model)
    finally:
        instrumentor.uninstrument()
    assert GenerationMixin.__dict__["generate"] is generate
    names = [s.name for s in telemetry.spans()]
    assert names.count("text_completion zero-code-tiny") == 1
    assert "transformers.prefill" in names and "transformers.decode" in names
    telemetry.clear()
    model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert telemetry.spans() == []
