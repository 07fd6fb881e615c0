"""``BenchmarkReport``: a benchmark's results as versioned JSON, with the environment it ran in."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from llamatelemetry.bench.records import TestResult
from llamatelemetry.errors import LlamaTelemetryError

__all__ = ["BenchmarkReport", "ReportFormatError", "ReportSchemaError", "SCHEMA", "SCHEMA_VERSION"]

#: The ``schema`` value of every report, so a stray JSON file is recognized as not one.
SCHEMA: Final = "llamatelemetry.bench.report"
#: Bumped whenever a reader of the previous version would misread a report.
SCHEMA_VERSION: Final = 1


class ReportFormatError(LlamaTelemetryError, ValueError):
    """A file or dict is not a benchmark report (not JSON, or required fields are missing)."""


class ReportSchemaError(ReportFormatError):
    """A report was written with a schema version this version of llamatelemetry cannot read."""

    def __init__(self, version: object, source: str) -> None:
        from llamatelemetry._version import __version__

        self.version = version
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        advice = ("it was written by a newer llamatelemetry: upgrade with pip install --upgrade llamatelemetry-core"
                  if newer else "re-run the benchmark with this version to get a report it can read")
        super().__init__(f"{source} has benchmark report schema version {version!r}, but llamatelemetry "
                         f"{__version__} reads only version {SCHEMA_VERSION}; {advice}.")


def _now_iso() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@attrs.frozen
class BenchmarkReport:
    """Everything a benchmark run measured, where it ran, and how it was configured.

    ``environment`` is the fingerprint (library versions, model name and sha256, server build and
    settings, GPU model and driver, CPU); ``config`` is the run's settings; ``tests`` holds one
    ``TestResult`` per load level. JSON with ``schema`` and ``schema_version``; ``load`` refuses
    a version it cannot read.

    Example::

        report = BenchmarkRunner().run(llama_server_url="http://127.0.0.1:8090", n_tokens=64)
        report.save("base.json")
        again = BenchmarkReport.load("base.json")
        again.tests[0].summary.metrics["ttft_ms"].p90
    """

    tests: tuple[TestResult, ...]
    environment: Mapping[str, Any] = attrs.field(factory=dict)
    config: Mapping[str, Any] = attrs.field(factory=dict)
    name: str = "benchmark"
    created_at: str = attrs.field(factory=_now_iso)
    schema_version: int = SCHEMA_VERSION

    def test(self, name: str) -> TestResult:
        """The test named ``name``; ``KeyError`` lists the names there are."""
        for result in self.tests:
            if result.name == name:
                return result
        raise KeyError(f"no test named {name!r} in this report (tests: {', '.join(t.name for t in self.tests)})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"schema": SCHEMA, "schema_version": self.schema_version, "name": self.name,
                "created_at": self.created_at, "environment": dict(self.environment), "config": dict(self.config),
                "tests": [t.to_dict() for t in self.tests]}

    def to_json(self, *, indent: int | None = 1) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "the report") -> BenchmarkReport:
        """Read the JSON form; a report of another schema version raises ``ReportSchemaError``."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise ReportFormatError(f"{source} is not a llamatelemetry benchmark report (its \"schema\" field is "
                                    f"not {SCHEMA!r}); pass a file written by `llamatelemetry bench --output`.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ReportSchemaError(version, source)
        try:
            tests = tuple(TestResult.from_dict(t) for t in data["tests"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportFormatError(f"{source} is damaged: {type(exc).__name__}: {exc}.") from None
        return cls(tests=tests, environment=dict(data.get("environment") or {}), config=dict(data.get("config") or {}),
                   name=str(data.get("name", "benchmark")), created_at=str(data.get("created_at", "")),
                   schema_version=version)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically: a reader never sees half a file); returns the path."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BenchmarkReport:
        """Read a report written by ``save``; clear errors for a missing, damaged or too-new file."""
        source = Path(path).expanduser()
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReportFormatError(f"Report file not found: {source}.") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ReportFormatError(f"{source} is not JSON ({exc}).") from None
        return cls.from_dict(data, source=str(source))
