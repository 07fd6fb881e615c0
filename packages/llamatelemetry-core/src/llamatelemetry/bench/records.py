"""The records of a benchmark: one ``RequestRecord`` per request, a ``TestSummary`` and ``TestResult`` per load level.

Times inside a test are seconds from the test's start on the client's monotonic clock; latencies
are milliseconds. A figure that could not be known is ``None``, never a made-up 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from llamatelemetry.bench.stats import Distribution, max_overlap

__all__ = ["RequestRecord", "GPUFigures", "ServerFigure", "ServerFigures", "TestSummary", "TestResult", "LoadMode",
           "DISTRIBUTION_METRICS", "summarize"]

LoadMode = Literal["concurrency", "rate", "sequential"]


def _tuple_of_floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _optional_ints(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


@attrs.frozen
class RequestRecord:
    """What one benchmark request measured (client clock) and what the server reported beside it.

    ``gaps_ms`` holds every gap between consecutive output chunks (a real distribution, not an
    average); ``tokens_per_chunk`` says how many tokens each output chunk carried (from the
    server's per-token timings; ``None`` where the server does not give them). ``output_tokens``
    is the server's usage count, never a count of chunks.

    Example::

        record.ttft_ms, record.gaps_ms[:3], record.tokens_per_chunk[:3], record.output_tokens
    """

    index: int
    prompt_id: str
    ok: bool
    #: Seconds from the test's start at which the request was due (open loop) or picked up (closed loop).
    scheduled_s: float
    #: Seconds from the test's start at which the request was sent.
    sent_s: float
    #: Client-side time to the first chunk that carried output, from sending.
    ttft_ms: float | None = None
    #: Client-side time from sending to the end of the response.
    e2e_ms: float | None = None
    gaps_ms: tuple[float, ...] = attrs.field(default=(), converter=_tuple_of_floats)
    tokens_per_chunk: tuple[int, ...] | None = attrs.field(default=None, converter=_optional_ints)
    #: Output chunks received (each may carry several tokens).
    chunks: int = 0
    input_tokens: int | None = None
    #: Prompt tokens the server took from its prompt cache (llama.cpp ``timings.cache_n``).
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    #: The server's own prefill time and decode time (llama.cpp ``timings.prompt_ms`` / ``predicted_ms``).
    server_prompt_ms: float | None = None
    server_predicted_ms: float | None = None
    #: The server's (or in-process backend's) prefill and decode speeds, tokens per second.
    prefill_tps: float | None = None
    decode_tps: float | None = None
    finish_reason: str | None = None
    #: Short class name of the failure (``ContextSizeExceededError``) and its message.
    error_type: str | None = None
    error_message: str | None = None
    #: The request span's trace id (hex), to find the request in a tracing backend.
    trace_id: str | None = None

    @property
    def end_s(self) -> float | None:
        """Seconds from the test's start at which the response ended."""
        return None if self.e2e_ms is None else self.sent_s + self.e2e_ms / 1e3

    @property
    def first_chunk_s(self) -> float | None:
        """Seconds from the test's start at which the first output chunk arrived."""
        return None if self.ttft_ms is None else self.sent_s + self.ttft_ms / 1e3

    @property
    def schedule_lag_ms(self) -> float:
        """How late the request was sent after it was due (the harness or a full in-flight cap)."""
        return max(0.0, (self.sent_s - self.scheduled_s) * 1e3)

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first: ``(e2e - ttft) / (output_tokens - 1)``."""
        if self.e2e_ms is None or self.ttft_ms is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (floats rounded to microseconds)."""
        data = attrs.asdict(self)
        for key in ("scheduled_s", "sent_s"):
            data[key] = round(data[key], 6)
        for key in ("ttft_ms", "e2e_ms", "server_prompt_ms", "server_predicted_ms"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        data["gaps_ms"] = [round(g, 3) for g in self.gaps_ms]
        data["tokens_per_chunk"] = None if self.tokens_per_chunk is None else list(self.tokens_per_chunk)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestRecord:
        """Read the JSON form (unknown keys, written by a newer minor version, are ignored)."""
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@attrs.frozen
class GPUFigures:
    """GPU figures of one test, from ``llamatelemetry.gpu`` when it is installed and sees a GPU.

    ``peak_memory_used_bytes`` is the highest memory use sampled on each device during the test;
    ``energy_joules`` the energy all devices used (from their energy counters).
    """

    devices: tuple[str, ...]
    peak_memory_used_bytes: tuple[int | None, ...]
    energy_joules: float | None
    samples: int
    joules_per_output_token: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        data = attrs.asdict(self)
        data["devices"] = list(self.devices)
        data["peak_memory_used_bytes"] = list(self.peak_memory_used_bytes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GPUFigures:
        """Read the JSON form."""
        return cls(devices=tuple(data.get("devices", ())),
                   peak_memory_used_bytes=tuple(data.get("peak_memory_used_bytes", ())),
                   energy_joules=data.get("energy_joules"), samples=int(data.get("samples", 0)),
                   joules_per_output_token=data.get("joules_per_output_token"))


@attrs.frozen
class ServerFigure:
    """One figure a load driver read from the server over a test: a value with its unit and a label for tables."""

    value: float
    #: ``"tokens"``, ``"s"``, ``"calls"``, ... (empty when the figure is a plain count or a ratio).
    unit: str = ""
    #: What the results table calls it; the figure's name when empty.
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"value": self.value, "unit": self.unit, "label": self.label}


@attrs.frozen
class ServerFigures:
    """What the server itself said about a test (warm-up excluded), as named figures its load driver chose.

    The core knows no server: a driver fills ``figures`` (for llama.cpp, how far the ``/metrics``
    counters moved and the most slots ``/slots`` showed busy) and the report, the results table
    and the HTML page show them as they are. Every figure is optional: servers differ.

    Example::

        server = test.summary.server
        server["tokens_predicted"], server.figures["tokens_predicted"].unit, server.source
    """

    figures: Mapping[str, ServerFigure] = attrs.field(factory=dict)
    #: Where the figures come from (``"llama.cpp /metrics, /slots"``).
    source: str = ""

    def __getitem__(self, name: str) -> float | None:
        """The value of the figure ``name``, or ``None`` when the driver could not read it."""
        figure = self.figures.get(name)
        return None if figure is None else figure.value

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"source": self.source, "figures": {name: f.to_dict() for name, f in self.figures.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerFigures:
        """Read the JSON form (also the flat ``{name: value}`` form of reports written before drivers were plugins)."""
        raw = data.get("figures")
        if not isinstance(raw, Mapping):
            return cls(figures={k: ServerFigure(value=v) for k, v in data.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
        figures = {name: ServerFigure(value=f["value"], unit=str(f.get("unit", "")), label=str(f.get("label", "")))
                   for name, f in raw.items() if isinstance(f, Mapping) and f.get("value") is not None}
        return cls(figures=figures, source=str(data.get("source", "")))


#: The per-request figures summarized as distributions, with their units, in report order.
DISTRIBUTION_METRICS: dict[str, str] = {
    "ttft_ms": "ms",
    "itl_ms": "ms",
    "tpot_ms": "ms",
    "e2e_ms": "ms",
    "tokens_per_chunk": "tokens",
    "input_tokens": "tokens",
    "cached_input_tokens": "tokens",
    "output_tokens": "tokens",
    "server_prompt_ms": "ms",
    "prefill_tps": "tokens/s",
    "decode_tps": "tokens/s",
    "schedule_lag_ms": "ms",
}


@attrs.frozen
class TestSummary:
    """Aggregates of one test: request counts, throughput, distributions, errors by type, overlap.

    ``metrics`` maps each name of ``DISTRIBUTION_METRICS`` to its ``Distribution``; ``itl_ms``
    pools every inter-chunk gap of every request. Throughputs are over ``duration_s``, from the
    first request sent to the last response ended.
    """

    __test__ = False  # a record, not a pytest test class

    completed: int
    failed: int
    warmup_requests: int
    duration_s: float
    requests_per_s: float | None
    output_tokens_per_s: float | None
    input_tokens_per_s: float | None
    total_output_tokens: int
    total_input_tokens: int
    total_cached_input_tokens: int
    metrics: Mapping[str, Distribution]
    errors: Mapping[str, int]
    #: Requests in flight at once (send to end), and streams decoding at once (first chunk to end).
    max_in_flight: int
    max_decoding_at_once: int
    #: Completed requests whose response carried no usage: their output tokens are unknown, not guessed.
    usage_missing: int = 0
    server: ServerFigures | None = None
    gpu: GPUFigures | None = None

    @property
    def error_rate(self) -> float:
        """Failed requests over all measured requests (0 when there were none)."""
        total = self.completed + self.failed
        return self.failed / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "completed": self.completed, "failed": self.failed, "warmup_requests": self.warmup_requests,
            "duration_s": round(self.duration_s, 6), "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s, "input_tokens_per_s": self.input_tokens_per_s,
            "total_output_tokens": self.total_output_tokens, "total_input_tokens": self.total_input_tokens,
            "total_cached_input_tokens": self.total_cached_input_tokens, "error_rate": self.error_rate,
            "metrics": {name: d.to_dict() for name, d in self.metrics.items()},
            "errors": dict(self.errors), "max_in_flight": self.max_in_flight,
            "max_decoding_at_once": self.max_decoding_at_once, "usage_missing": self.usage_missing,
            "server": self.server.to_dict() if self.server is not None else None,
            "gpu": self.gpu.to_dict() if self.gpu is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestSummary:
        """Read the JSON form."""
        server, gpu = data.get("server"), data.get("gpu")
        return cls(
            completed=int(data["completed"]), failed=int(data["failed"]),
            warmup_requests=int(data.get("warmup_requests", 0)), duration_s=float(data["duration_s"]),
            requests_per_s=data.get("requests_per_s"), output_tokens_per_s=data.get("output_tokens_per_s"),
            input_tokens_per_s=data.get("input_tokens_per_s"),
            total_output_tokens=int(data.get("total_output_tokens", 0)),
            total_input_tokens=int(data.get("total_input_tokens", 0)),
            total_cached_input_tokens=int(data.get("total_cached_input_tokens", 0)),
            metrics={name: Distribution.from_dict(d) for name, d in data.get("metrics", {}).items()},
            errors=dict(data.get("errors", {})), max_in_flight=int(data.get("max_in_flight", 0)),
            max_decoding_at_once=int(data.get("max_decoding_at_once", 0)),
            usage_missing=int(data.get("usage_missing", 0)),
            server=ServerFigures.from_dict(server) if isinstance(server, Mapping) else None,
            gpu=GPUFigures.from_dict(gpu) if isinstance(gpu, Mapping) else None,
        )


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 4) if seconds > 0 else None


def summarize(records: Sequence[RequestRecord], *, warmup_requests: int = 0, server: ServerFigures | None = None,
              gpu: GPUFigures | None = None) -> TestSummary:
    """Aggregate a test's measured requests (warm-up requests are not among them)."""
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    ends = [r.end_s for r in records if r.end_s is not None]
    start = min((r.sent_s for r in records), default=0.0)
    duration = max(0.0, max(ends, default=start) - start)
    output = sum(r.output_tokens or 0 for r in done)
    inputs = sum(r.input_tokens or 0 for r in done)
    cached = sum(r.cached_input_tokens or 0 for r in done)
    metrics = {
        "ttft_ms": Distribution.of(r.ttft_ms for r in done),
        "itl_ms": Distribution.of(g for r in done for g in r.gaps_ms),
        "tpot_ms": Distribution.of(r.tpot_ms for r in done),
        "e2e_ms": Distribution.of(r.e2e_ms for r in done),
        "tokens_per_chunk": Distribution.of(t for r in done for t in (r.tokens_per_chunk or ())),
        "input_tokens": Distribution.of(r.input_tokens for r in done),
        "cached_input_tokens": Distribution.of(r.cached_input_tokens for r in done),
        "output_tokens": Distribution.of(r.output_tokens for r in done),
        "server_prompt_ms": Distribution.of(r.server_prompt_ms for r in done),
        "prefill_tps": Distribution.of(r.prefill_tps for r in done),
        "decode_tps": Distribution.of(r.decode_tps for r in done),
        "schedule_lag_ms": Distribution.of(r.schedule_lag_ms for r in records),
    }
    if gpu is not None and gpu.energy_joules is not None and output:
        gpu = attrs.evolve(gpu, joules_per_output_token=round(gpu.energy_joules / output, 6))
    in_flight = [(r.sent_s, r.end_s) for r in records if r.end_s is not None]
    decoding = [(r.first_chunk_s, r.end_s) for r in done if r.first_chunk_s is not None and r.end_s is not None]
    return TestSummary(
        completed=len(done), failed=len(failed), warmup_requests=warmup_requests, duration_s=duration,
        requests_per_s=_rate(len(done), duration), output_tokens_per_s=_rate(output, duration),
        input_tokens_per_s=_rate(inputs, duration), total_output_tokens=output, total_input_tokens=inputs,
        total_cached_input_tokens=cached, metrics=metrics,
        errors=dict(Counter(r.error_type or "unknown" for r in failed).most_common()),
        max_in_flight=max_overlap(in_flight), max_decoding_at_once=max_overlap(decoding),  # type: ignore[arg-type]
        usage_missing=sum(1 for r in done if r.output_tokens is None), server=server, gpu=gpu,
    )


@attrs.frozen
class TestResult:
    """One load level of a benchmark (``concurrency=4``, ``rate=2/s``): its settings, requests and summary.

    Example::

        result = report.test("concurrency=4")
        result.summary.metrics["ttft_ms"].p99, len(result.requests)
    """

    __test__ = False  # a record, not a pytest test class

    name: str
    mode: LoadMode
    #: Concurrent streams (closed loop), or the in-flight cap of an open-loop test (``None``: no cap).
    concurrency: int | None
    #: Poisson arrival rate, requests per second (open loop only).
    request_rate: float | None
    #: Wall-clock start, ISO 8601 UTC.
    started_at: str
    requests: tuple[RequestRecord, ...]
    summary: TestSummary

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"name": self.name, "mode": self.mode, "concurrency": self.concurrency,
                "request_rate": self.request_rate, "started_at": self.started_at,
                "summary": self.summary.to_dict(), "requests": [r.to_dict() for r in self.requests]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestResult:
        """Read the JSON form."""
        return cls(name=str(data["name"]), mode=data["mode"], concurrency=data.get("concurrency"),
                   request_rate=data.get("request_rate"), started_at=str(data.get("started_at", "")),
                   requests=tuple(RequestRecord.from_dict(r) for r in data.get("requests", ())),
                   summary=TestSummary.from_dict(data["summary"]))
