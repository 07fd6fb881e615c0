"""Zero-code: ``opentelemetry-instrument python app.py`` (opentelemetry-distro) records llama.cpp and transformers.

The application below has no llamatelemetry code: it makes a ``llama_cpp.Llama``, calls a real
llama.cpp server through ``LlamaCppClient`` and generates with a transformers model. It runs in a
real ``opentelemetry-instrument`` subprocess whose distro exports OTLP/gRPC to a real rotel
collector; the test asserts on the spans that reached it. A second run names our entry points in
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` and shows each instrumentation off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.distro", reason="pip install opentelemetry-distro opentelemetry-instrumentation")
pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python")
pytest.importorskip("transformers")

ENTRY_POINTS = ("llamatelemetry_llama_cpp", "llamatelemetry_llamacpp_client", "llamatelemetry_transformers")

APP = """
import sys

import llama_cpp
from opentelemetry import trace
from transformers import AutoModelForCausalLM, AutoTokenizer

from llamatelemetry_llamacpp import LlamaCppClient

tiny_gguf, server_url, hf_folder = sys.argv[1:4]
llm = llama_cpp.Llama(tiny_gguf, n_ctx=128, n_threads=1, verbose=False)
llm.create_completion("Hello", max_tokens=2)

with LlamaCppClient(server_url) as client:
    for _ in client.chat.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True):
        pass

tokenizer = AutoTokenizer.from_pretrained(hf_folder)
model = AutoModelForCausalLM.from_pretrained(hf_folder)
model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)

# The application's own span, last: once it arrived, everything before it was exported too.
with trace.get_tracer("app").start_as_current_span("app done"):
    pass
"""


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers Llama with its tokenizer, saved to a folder (no hub)."""
    import torch

    from llamatelemetry_transformers.testing import write_tiny_model

    torch.set_num_threads(1)
    return write_tiny_model(tmp_path_factory.mktemp("hf") / "tiny-hf")


def _run_instrumented(tmp_path: Path, collector: Any, args: list[str], **env: str) -> None:
    instrument = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert instrument is not None, "opentelemetry-instrument is installed with opentelemetry-instrumentation"
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OTEL_SERVICE_NAME": "zero-code-app", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OMP_NUM_THREADS": "1", **env,
    }
    done = subprocess.run([instrument, sys.executable, str(app), *args], capture_output=True, text=True,
                          env=environment, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]


def test_opentelemetry_instrument_records_llama_client_and_generate(
        tmp_path: Path, otlp_collector: tuple[Any, Any], tiny_gguf: Path, llama_server: Any, hf_folder: Path) -> None:
    """Llama, LlamaCppClient and generate spans reach the collector through the distro's providers."""
    collector, sink = otlp_collector
    _run_instrumented(tmp_path, collector, [str(tiny_gguf), llama_server.base_url, str(hf_folder)])
    sink.wait_for_spans(lambda s: s.name == "app done")
    spans = sink.spans()
    by_name = {s.name: s for s in spans}
    server_model = Path(llama_server.model_path).stem

    llama = by_name["text_completion tiny-llama"]  # llama_cpp.Llama, in process
    assert llama.kind == 1 and llama.attributes["gen_ai.provider.name"] == "llama_cpp"  # INTERNAL
    assert llama.attributes["gen_ai.usage.output_tokens"] == 2

    chat = by_name[f"chat {server_model}"]  # LlamaCppClient, over HTTP
    assert chat.kind == 3 and chat.attributes["gen_ai.request.stream"] is True  # CLIENT
    phases = {s.name for s in spans if s.parent_span_id == chat.span_id}
    assert phases == {"llama_cpp.prefill", "llama_cpp.decode"}

    generate = by_name["text_completion tiny-hf"]  # transformers generate
    assert generate.attributes["gen_ai.provider.name"] == "transformers"
    assert generate.attributes["gen_ai.usage.output_tokens"] == 3
    assert {s.name for s in spans if s.parent_span_id == generate.span_id} >= {"transformers.prefill",
                                                                                "transformers.decode"}
    # One resource: the distro's, configured from OTEL_SERVICE_NAME, exported all our spans.
    assert {s.resource.get("service.name") for s in spans} == {"zero-code-app"}
    assert len({s.name for s in spans if s.name.startswith(("chat ", "text_completion "))}) == 3


def test_disabled_instrumentations_record_nothing(
        tmp_path: Path, otlp_collector: tuple[Any, Any], tiny_gguf: Path, llama_server: Any, hf_folder: Path) -> None:
    """Each entry point named in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS is off: no GenAI span at all."""
    collector, sink = otlp_collector
    _run_instrumented(tmp_path, collector, [str(tiny_gguf), llama_server.base_url, str(hf_folder)],
                      OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=", ".join(ENTRY_POINTS))
    sink.wait_for_spans(lambda s: s.name == "app done")
    assert [s.name for s in sink.spans()] == ["app done"]


def test_disabling_one_instrumentation_leaves_the_others_recording(
        tmp_path: Path, otlp_collector: tuple[Any, Any], tiny_gguf: Path, llama_server: Any, hf_folder: Path) -> None:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=llamatelemetry_llamacpp_client: no chat span; Llama and generate stay."""
    collector, sink = otlp_collector
    _run_instrumented(tmp_path, collector, [str(tiny_gguf), llama_server.base_url, str(hf_folder)],
                      OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="llamatelemetry_llamacpp_client")
    sink.wait_for_spans(lambda s: s.name == "app done")
    names = {s.name for s in sink.spans()}
    assert {"text_completion tiny-llama", "text_completion tiny-hf", "app done"} <= names
    assert not [name for name in names if name.startswith("chat ")], names
