"""dashboards/llamatelemetry.json: importable by Grafana as is, valid PromQL (promtool), only our metric names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.exporter.prometheus", reason='pip install "llamatelemetry-core[prometheus]"')

from metric_names import (
    SEND_TO_DOC,
    documented_prometheus_names,
    expand,
    load_dashboard,
    query_panels,
    series_in,
)
from prometheus_server import promtool_binary

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    return load_dashboard()


def test_the_dashboard_imports_as_is(dashboard: dict[str, Any]) -> None:
    """A datasource input for Prometheus, a fixed uid, a current schema, service and model variables."""
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    assert dashboard["uid"] == "llamatelemetry-serving" and dashboard["id"] is None
    assert dashboard["schemaVersion"] >= 39, "Grafana 11 and later"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"service", "model"}
    for variable in variables.values():
        assert variable["datasource"] == DATASOURCE and variable["includeAll"] and variable["allValue"] == ".*"
    assert variables["service"]["definition"] == "label_values(target_info, service_name)"
    assert "gen_ai_request_model" in variables["model"]["definition"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_fill_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    """Every panel sits inside Grafana's 24 columns and no two overlap."""
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


def test_every_query_uses_the_prometheus_input_and_the_filters(dashboard: dict[str, Any]) -> None:
    """Panels and queries read ${DS_PROMETHEUS}; every selector is filtered by $service."""
    for panel in query_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            expr = target["expr"]
            assert expr.count("{") == expr.count('service_name=~"$service"'), (panel["title"], expr)
            if "gen_ai_" in expr:
                assert 'gen_ai_request_model=~"$model"' in expr, (panel["title"], expr)


def test_promtool_accepts_every_panel_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query, as Grafana expands it, written as a recording rule that ``promtool check rules`` accepts."""
    promtool = promtool_binary()
    if promtool is None:
        pytest.skip("promtool is not installed: apt-get install --no-install-recommends prometheus")
    rules = [{"record": f"llamatelemetry_dashboard:panel{panel['id']}_{target['refId']}",
              "expr": expand(target["expr"])}
             for panel in query_panels(dashboard) for target in panel["targets"]]
    good = tmp_path / "dashboard-rules.yml"
    good.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(good)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
    # The check can fail: promtool rejects a broken query.
    bad = tmp_path / "bad-rules.yml"
    rules[0]["expr"] = rules[0]["expr"].replace("rate(", "rate((", 1)
    bad.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    assert subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, timeout=60).returncode != 0


def test_every_metric_a_panel_reads_is_one_we_document(dashboard: dict[str, Any]) -> None:
    """Every series name in the queries is a documented metric under its Prometheus name (no typos, no guesses)."""
    documented = documented_prometheus_names()
    used: dict[str, set[str]] = {}
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            for name in series_in(target["expr"]):
                used.setdefault(name, set()).add(panel["title"])
    assert len(used) >= 20
    assert {name: titles for name, titles in used.items() if name not in documented} == {}


def test_the_docs_describe_every_panel(dashboard: dict[str, Any]) -> None:
    """docs/send-to/prometheus-grafana.md names every row and panel of the dashboard."""
    text = SEND_TO_DOC.read_text(encoding="utf-8")
    missing = [p["title"] for p in dashboard["panels"] if p["title"] not in text]
    assert missing == []
