"""Every recipe in docs/recipes runs, as written, against a real llama.cpp server."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import llamatelemetry
from llamatelemetry.inference import InferenceRequest, SamplingParams, create_engine
from llamatelemetry.testing import InMemoryTelemetry

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"


def recipe(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ask(url: str, text: str = "Say hi.", max_tokens: int = 4) -> Any:
    with create_engine("llama.cpp", llama_server_url=url) as engine:
        return engine.generate(InferenceRequest(messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                                                sampling=SamplingParams(temperature=0.0)))


def _request_span(telemetry: InMemoryTelemetry) -> Any:
    # The request span, not its prefill/decode phase children (which end before it).
    (span,) = [s for s in telemetry.spans() if s.name.startswith("chat ")]
    return span


def exported(path: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in map(json.loads, path.read_text().splitlines()) if r["signal"] == "span"}


def test_tenant_is_six_lines_and_works(llama_server: Any) -> None:
    assert len((RECIPES / "tenant.py").read_text().strip().splitlines()) == 6
    with InMemoryTelemetry(plugins=[recipe("tenant").Tenant()]) as telemetry:
        ask(llama_server.base_url)
        assert _request_span(telemetry).attributes["app.tenant"] == "acme"


def test_redact_before_export(llama_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "redacted.jsonl"
    llamatelemetry.init(service_name="recipes", output_file=out, metrics_exporter="none", capture_content="SPAN_ONLY",
                        plugins=[recipe("redact_before_export").RedactBeforeExport()])
    with llamatelemetry.span("handle request", attributes={"app.user.email": "ana@example.com"}):
        ask(llama_server.base_url, "Write back my address ana@example.com please.")
    llamatelemetry.shutdown()
    spans = exported(out)
    assert "app.user.email" not in spans["handle request"]["attributes"]
    chat = next(s for name, s in spans.items() if name.startswith("chat"))
    assert "ana@example.com" not in chat["attributes"]["gen_ai.input.messages"]
    assert "<email>" in chat["attributes"]["gen_ai.input.messages"]


def test_business_metric(llama_server: Any) -> None:
    module = recipe("business_metric")
    plugin = module.TokensByPlan(plan_of=lambda request: "pro")
    with InMemoryTelemetry(plugins=[plugin]) as telemetry:
        result = ask(llama_server.base_url, max_tokens=5)
        points = telemetry.metric_points("acme.billing.output_tokens")
        assert [(p.attributes, p.value) for p in points] == [({"acme.plan": "pro"}, result.output_tokens)]
        assert _request_span(telemetry).attributes["acme.plan"] == "pro"


def test_drop_spans_by_rule(llama_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "dropped.jsonl"
    llamatelemetry.init(service_name="recipes", output_file=out, metrics_exporter="none",
                        plugins=[recipe("drop_spans").DropByRule()])
    with llamatelemetry.span("GET /health"):
        pass
    ask(llama_server.base_url)
    telemetry = llamatelemetry.current()
    assert telemetry is not None
    llamatelemetry.shutdown()
    names = set(exported(out))
    assert "GET /health" not in names and any(name.startswith("chat") for name in names)
    assert telemetry.export_stats.filtered == 1


@pytest.mark.parametrize("name", ["tenant", "redact_before_export", "business_metric", "drop_spans"])
def test_every_recipe_is_in_the_docs(name: str) -> None:
    assert f'--8<-- "docs/recipes/{name}.py"' in (RECIPES / "index.md").read_text()
