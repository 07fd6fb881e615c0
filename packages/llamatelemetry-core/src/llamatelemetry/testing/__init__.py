"""Test helpers for llamatelemetry and its plugin authors.

- ``InMemoryTelemetry``: ``init()`` with in-memory span and metric exporters, for asserting on telemetry.
- ``fresh_plugin_manager()``: an isolated plugin manager (no installed plugins unless asked).
- ``BackendConformance``: a pytest test class any ``LLMBackend`` implementation runs against itself.

The pytest fixtures ``llamatelemetry_telemetry`` and ``llamatelemetry_plugin_manager`` are
available in every pytest run once llamatelemetry-core is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llamatelemetry.plugins import PluginManager, set_plugin_manager

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llamatelemetry._runtime import Telemetry
    from llamatelemetry.testing.conformance import BackendConformance

__all__ = ["InMemoryTelemetry", "fresh_plugin_manager", "BackendConformance", "MetricPoint"]


@contextlib.contextmanager
def fresh_plugin_manager(*plugins: object, load_entry_points: bool = False) -> Iterator[PluginManager]:
    """Swap in a new plugin manager holding ``plugins`` (and, if asked, the installed ones); restore after."""
    manager = PluginManager(load_entry_points=load_entry_points)
    previous = set_plugin_manager(manager)
    try:
        for plugin in plugins:
            manager.register(plugin)
        yield manager
    finally:
        set_plugin_manager(previous)


class MetricPoint:
    """One data point read back from the in-memory reader."""

    def __init__(self, name: str, unit: str, attributes: dict[str, Any], point: Any) -> None:
        self.name = name
        self.unit = unit
        self.attributes = attributes
        self.point = point

    @property
    def value(self) -> float:
        """A sum or gauge's value, or a histogram's count."""
        value = self.point.value if hasattr(self.point, "value") else self.point.count
        return float(value)

    def __repr__(self) -> str:
        return f"<MetricPoint {self.name} {self.attributes} {self.value}>"


class InMemoryTelemetry:
    """``llamatelemetry.init()`` with in-memory exporters; use as a context manager.

    Example::

        with InMemoryTelemetry() as telemetry:
            engine.generate(request)
            span = telemetry.span("chat tiny")
            assert span.attributes["gen_ai.usage.output_tokens"] == 8
    """

    def __init__(self, **init_options: Any) -> None:
        self._options = init_options
        self.telemetry: Telemetry | None = None
        self.exporter: InMemorySpanExporter | None = None
        self.reader: InMemoryMetricReader | None = None

    def __enter__(self) -> InMemoryTelemetry:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        import llamatelemetry

        llamatelemetry.shutdown()
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        options: dict[str, Any] = {
            "service_name": "llamatelemetry-test", "traces_exporter": "none", "metrics_exporter": "none",
            "use_existing_providers": False, "set_global_providers": False,
        }
        options.update(self._options)
        options["span_processors"] = [SimpleSpanProcessor(self.exporter), *options.get("span_processors", ())]
        options["metric_readers"] = [self.reader, *options.get("metric_readers", ())]
        self.telemetry = llamatelemetry.init(**options)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.telemetry is not None:
            self.telemetry.shutdown()

    def spans(self) -> list[ReadableSpan]:
        """Every finished span so far, oldest first."""
        assert self.exporter is not None, "use InMemoryTelemetry as a context manager"
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        """The one finished span named ``name`` (AssertionError listing the names when not exactly one)."""
        found = [s for s in self.spans() if s.name == name]
        if len(found) != 1:
            raise AssertionError(f"expected one span named {name!r}, found {len(found)}; spans: "
                                 f"{[s.name for s in self.spans()]}")
        return found[0]

    def clear(self) -> None:
        """Forget the spans recorded so far."""
        assert self.exporter is not None
        self.exporter.clear()

    def metric_points(self, name: str | None = None) -> list[MetricPoint]:
        """Collect now and return the data points (of metric ``name`` only, when given)."""
        assert self.reader is not None, "use InMemoryTelemetry as a context manager"
        data = self.reader.get_metrics_data()
        points: list[MetricPoint] = []
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if name is not None and metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        points.append(MetricPoint(metric.name, metric.unit or "", dict(point.attributes or {}), point))
        return points


def __getattr__(name: str) -> Any:
    if name == "BackendConformance":
        from llamatelemetry.testing.conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'llamatelemetry.testing' has no attribute {name!r}")
