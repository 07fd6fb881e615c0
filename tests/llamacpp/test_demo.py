"""The main job, `llamatelemetry demo`, run as a user runs it: a real server, real text, real telemetry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')


def _demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-m", "llamatelemetry", "demo", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _spans(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["signal"] == "span"]


def test_demo_on_a_tiny_generated_model(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    output = tmp_path / "demo.jsonl"
    result = _demo("--tiny", "--max-tokens", "8", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert "generated text:" in text and "spans:" in text and "metrics:" in text
    assert "llamatelemetry demo" in text and "└─ chat tiny-llama" in text
    assert "time to first token (client clock)" in text and "decode (server)" in text
    spans = {s["name"]: s for s in _spans(output)}
    chat = spans["chat tiny-llama"]
    assert chat["kind"] == "SpanKind.CLIENT"
    assert chat["attributes"]["gen_ai.provider.name"] == "llama_cpp"
    assert chat["attributes"]["gen_ai.usage.output_tokens"] == 8
    assert "gen_ai.input.messages" not in chat["attributes"], "no content unless asked"
    assert chat["parent_id"] == spans["llamatelemetry demo"]["context"]["span_id"]
    assert "llama.cpp server start" in spans


def test_demo_on_smollm2_produces_real_text(tmp_path: Path, smollm2_gguf: Path) -> None:
    output = tmp_path / "smol.jsonl"
    result = _demo("--max-tokens", "24", "--output", str(output), "--capture-content")
    assert result.returncode == 0, result.stderr[-3000:]
    generated = result.stdout.split("generated text:")[1].split("spans:")[0].strip()
    assert len(generated.split()) >= 5, generated
    chat = next(s for s in _spans(output) if s["name"].startswith("chat SmolLM2"))
    assert json.loads(chat["attributes"]["gen_ai.output.messages"])[0]["parts"][0]["content"].strip() == generated


def test_demo_exports_to_a_collector(tmp_path: Path, otlp_collector: tuple[Any, Any]) -> None:
    pytest.importorskip("gguf", reason="pip install gguf numpy")
    rotel, sink = otlp_collector
    output = tmp_path / "both.jsonl"
    result = _demo("--tiny", "--max-tokens", "4", "--output", str(output), "--otlp-endpoint", rotel.grpc_endpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    wanted = {"llamatelemetry demo", "llama.cpp server start", "chat tiny-llama"}
    received = {s.name for s in sink.wait_for_spans(lambda s: s.name in wanted, count=len(wanted))}
    assert received == wanted
    assert {s["name"] for s in _spans(output)} >= {"chat tiny-llama"}, "the file gets the spans too"


def test_demo_explains_a_missing_model(tmp_path: Path) -> None:
    result = _demo("--model", str(tmp_path / "nope.gguf"))
    assert result.returncode != 0
    assert "model file not found" in result.stderr
