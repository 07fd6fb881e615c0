"""The benchmark harness: concurrent streaming load, per-request figures, percentiles, reports, a regression gate.

Example::

    from llamatelemetry.bench import BenchmarkRunner, BenchmarkReport, compare_reports

    runner = BenchmarkRunner(backend="llama.cpp")
    report = runner.run(llama_server_url="http://127.0.0.1:8090", n_tokens=128, concurrency=[1, 4])
    report.save("current.json")
    for c in compare_reports(BenchmarkReport.load("base.json"), report, regression_threshold_pct=10.0):
        print(c.test_name, c.metric, c.delta_pct, c.regression)

The load itself comes from the backend's plugin (a load driver, registered with the hook
``llamatelemetry_register_load_drivers``; see ``llamatelemetry.bench.drivers``), or, for a backend
without one, from ``EngineLoadDriver`` over ``create_engine``. Importing this package is light:
drivers, the OpenTelemetry SDK and any GPU module are imported only when a benchmark runs.
"""

from __future__ import annotations

from llamatelemetry.bench.compare import (
    DEFAULT_METRICS,
    METRIC_DIRECTIONS,
    Comparison,
    compare_reports,
    environment_differences,
)
from llamatelemetry.bench.config import BenchmarkConfig, LoadSpec, ProgressEvent, poisson_schedule
from llamatelemetry.bench.drivers import (
    DoctorCheck,
    DriverArguments,
    DriverContext,
    DriverDescription,
    EngineLoadDriver,
    LoadDriver,
    LoadDriverError,
    LoadDriverFactory,
    LoadRequest,
    RequestOutcome,
)
from llamatelemetry.bench.gpu_monitor import GPUMonitor
from llamatelemetry.bench.prompts import (
    BUILTIN_PROMPTS,
    Prompt,
    PromptFileError,
    builtin_prompts,
    load_prompts,
)
from llamatelemetry.bench.records import (
    GPUFigures,
    RequestRecord,
    ServerFigure,
    ServerFigures,
    TestResult,
    TestSummary,
)
from llamatelemetry.bench.report import (
    SCHEMA_VERSION,
    BenchmarkReport,
    ReportFormatError,
    ReportSchemaError,
)
from llamatelemetry.bench.runner import BenchmarkRunner
from llamatelemetry.bench.stats import Distribution, percentile

__all__ = [
    "BUILTIN_PROMPTS",
    "DEFAULT_METRICS",
    "METRIC_DIRECTIONS",
    "SCHEMA_VERSION",
    "BenchmarkConfig",
    "BenchmarkReport",
    "BenchmarkRunner",
    "Comparison",
    "Distribution",
    "DoctorCheck",
    "DriverArguments",
    "DriverContext",
    "DriverDescription",
    "EngineLoadDriver",
    "GPUFigures",
    "GPUMonitor",
    "LoadDriver",
    "LoadDriverError",
    "LoadDriverFactory",
    "LoadRequest",
    "LoadSpec",
    "ProgressEvent",
    "Prompt",
    "PromptFileError",
    "ReportFormatError",
    "ReportSchemaError",
    "RequestOutcome",
    "RequestRecord",
    "ServerFigure",
    "ServerFigures",
    "TestResult",
    "TestSummary",
    "builtin_prompts",
    "compare_reports",
    "environment_differences",
    "load_prompts",
    "percentile",
    "poisson_schedule",
]
