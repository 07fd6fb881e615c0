"""Our documented metrics under the names Prometheus stores them, and the dashboard's queries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "llamatelemetry.json"
TELEMETRY_DOC = ROOT / "docs" / "reference" / "telemetry.md"
SEND_TO_DOC = ROOT / "docs" / "send-to" / "prometheus-grafana.md"

#: The llama.cpp server families the bridge knows (metrics_bridge's unit table), by llama.cpp's type:
#: a counter family is ``llamacpp:<name>_total``. The real-run test checks these against a real server's.
LLAMACPP_COUNTERS = frozenset({"prompt_tokens", "prompt_tokens_cached", "prompt_seconds", "tokens_predicted",
                               "tokens_predicted_seconds", "n_decode", "n_tokens_max", "spec_decode_num_drafts",
                               "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"})

#: What Grafana substitutes, for promtool and for queries against a real Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$service": ".*", "$model": ".*"}

_SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def prometheus_names(name: str, unit: str, kind: str) -> tuple[str, ...]:
    """The series names OpenTelemetry's Prometheus exporter gives a metric (dots → _, unit suffix, _total, _bucket)."""
    from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_full_name

    base = sanitize_full_name(name)
    suffix = map_unit(unit)
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    if kind == "counter":
        return (base if base.endswith("_total") else f"{base}_total",)
    if kind == "histogram":
        return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
    assert kind == "gauge", kind
    return (base,)


def _kind(instrument: str) -> str:
    if "histogram" in instrument:
        return "histogram"
    if "counter" in instrument and "up-down" not in instrument:
        return "counter"
    return "gauge"


def documented_metrics() -> dict[str, tuple[str, str]]:
    """Every metric in docs/reference/telemetry.md's metric tables: name → (kind, unit)."""
    metrics: dict[str, tuple[str, str]] = {}
    in_metrics_table = False
    for line in TELEMETRY_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| metric |"):
            in_metrics_table = True
            continue
        if not line.startswith("|"):
            in_metrics_table = False
            continue
        if not in_metrics_table or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        for name in names:
            metrics[name] = (_kind(cells[1]), cells[2])
    return metrics


def documented_prometheus_names() -> set[str]:
    """The Prometheus series names of every documented metric (the llama.cpp bridge's families expanded)."""
    from llamatelemetry_llamacpp.metrics_bridge import _UNITS

    names: set[str] = set()
    for name, (kind, unit) in documented_metrics().items():
        if "<name>" in name:  # llamatelemetry.llama_cpp.server.<name>: one per llama.cpp family
            for family, family_unit in _UNITS.items():
                family_kind = "counter" if family in LLAMACPP_COUNTERS else "gauge"
                names.update(prometheus_names(name.replace("<name>", family), family_unit, family_kind))
            continue
        names.update(prometheus_names(name, unit, kind))
    return names


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries (rows excluded), nested row panels included."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels += [p for p in [panel, *panel.get("panels", [])] if p.get("targets")]
    return panels


def expand(expr: str) -> str:
    """A panel's PromQL with Grafana's variables replaced as Grafana would for "All"."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable is left in {expr!r}"
    return expr


def series_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (every selector here is written name{...})."""
    return set(_SERIES.findall(expr))
