"""A benchmark run's settings (``BenchmarkConfig``), its load levels (``LoadSpec``) and progress events."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any, Literal

import attrs

from llamatelemetry.bench.records import LoadMode

__all__ = ["BenchmarkConfig", "LoadSpec", "ProgressEvent", "ProgressCallback", "poisson_schedule"]


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{attribute.name}={value!r} must be an integer >= 1")


def _levels(instance: object, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value:
        raise ValueError("concurrency needs at least one level, e.g. 1 or [1, 4]")
    for level in value:
        _positive_int(instance, attribute, level)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


def _as_optional_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _rates(instance: object, attribute: attrs.Attribute[Any], value: tuple[float, ...] | None) -> None:
    if value is not None:
        if not value:
            raise ValueError("request_rate needs at least one rate, e.g. 2.0 or [1.0, 4.0]")
        for rate in value:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
                raise ValueError(f"request_rate={rate!r} must be a number of requests per second > 0")


@attrs.frozen
class BenchmarkConfig:
    """Every setting of a benchmark run; stored in the report's ``config``.

    ``concurrency`` gives closed-loop tests (N streams, each sending its next request when the
    last one ended), one test per level. ``request_rates`` gives open-loop tests instead (Poisson
    arrivals at each rate, seeded), with ``max_concurrency`` capping the requests in flight.

    Example::

        BenchmarkConfig(backend="llama.cpp", llama_server_url="http://127.0.0.1:8090", n_tokens=64,
                        concurrency=(1, 4))
    """

    backend: str = "llama.cpp"
    #: The server to load (the seed API's name); a backend's load driver decides what it means (see its docs).
    llama_server_url: str | None = None
    #: A local model file: fingerprinted (sha256); a driver may load it in-process when there is no server URL.
    model_path: str | None = None
    n_tokens: int = attrs.field(default=128, validator=_positive_int)
    concurrency: tuple[int, ...] = attrs.field(default=(1,), converter=_as_tuple, validator=_levels)
    request_rates: tuple[float, ...] | None = attrs.field(default=None, converter=_as_optional_tuple,
                                                          validator=_rates)
    max_concurrency: int | None = attrs.field(default=None, validator=_positive_int)
    #: Measured requests per test; ``None`` sends each prompt once.
    num_requests: int | None = attrs.field(default=None, validator=_positive_int)
    #: Warm-up requests per test, left out of every figure; ``None`` sends one per concurrent stream.
    warmup: int | None = None
    seed: int = 0
    #: ``False`` asks the server not to reuse its prompt cache, so every prompt is processed cold (where it can).
    cache_prompt: bool = False
    #: ``True`` asks the server to ignore end-of-sequence, so every response is exactly ``n_tokens`` long
    #: (where the driver can; an engine backend generates as it always does).
    ignore_eos: bool = True
    temperature: float = 0.0
    operation: Literal["chat", "text_completion"] = "chat"
    timeout_s: float = 300.0
    #: Stop sending new requests after this many seconds of a test (requests in flight finish).
    max_duration_s: float | None = None
    hash_model: bool = True
    prompt_set: str = "builtin"
    name: str = "benchmark"
    api_key: str | None = attrs.field(default=None, repr=False)
    #: Keyword arguments for ``create_engine`` (the engine-based driver) or the backend's own driver.
    backend_options: dict[str, Any] = attrs.field(factory=dict)
    #: The load driver's own options (its command-line arguments: ``{"tiny": True}``, ``{"poll_slots": False}``).
    driver_options: dict[str, Any] = attrs.field(factory=dict)
    #: Extra fields a server driver sends in every request body (``{"stop": ["###"], "top_k": 1}``).
    extra_body: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.warmup is not None and (isinstance(self.warmup, bool) or not isinstance(self.warmup, int)
                                        or self.warmup < 0):
            raise ValueError(f"warmup={self.warmup!r} must be an integer >= 0, or None (one per stream)")
        if self.operation not in ("chat", "text_completion"):
            raise ValueError(f"operation={self.operation!r} must be 'chat' or 'text_completion'")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s!r} must be > 0")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s={self.max_duration_s!r} must be > 0")
        if self.request_rates is not None and len(self.concurrency) > 1:
            raise ValueError("give several concurrency levels or request rates, not both: with request_rate, "
                             "max_concurrency caps the requests in flight")

    def load_specs(self) -> list[LoadSpec]:
        """One ``LoadSpec`` per test, in run order."""
        if self.request_rates is not None:
            cap = self.max_concurrency
            return [LoadSpec(f"rate={rate:g}/s", "rate", cap, float(rate)) for rate in self.request_rates]
        return [LoadSpec(f"concurrency={level}", "concurrency", level, None) for level in self.concurrency]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the API key is never written)."""
        data = attrs.asdict(self, filter=lambda a, _: a.name != "api_key")
        data["concurrency"] = list(self.concurrency)
        data["request_rates"] = None if self.request_rates is None else list(self.request_rates)
        data["extra_body"] = {k: _json_value(v, lists=True) for k, v in self.extra_body.items()}
        data["backend_options"] = {k: _json_value(v) for k, v in self.backend_options.items()}
        data["driver_options"] = {k: _json_value(v) for k, v in self.driver_options.items()}
        return data


def _json_value(value: Any, *, lists: bool = False) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))) or (lists and isinstance(value, list)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


@attrs.frozen
class LoadSpec:
    """One test's load: closed loop at ``concurrency`` streams, or open loop at ``request_rate``."""

    name: str
    mode: LoadMode
    concurrency: int | None
    request_rate: float | None


@attrs.frozen
class ProgressEvent:
    """Where a test stands, sent to the progress callback after every request."""

    test: str
    test_index: int
    tests: int
    done: int
    failed: int
    total: int
    in_flight: int
    elapsed_s: float
    warmup: bool = False
    finished: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


def poisson_schedule(rate: float, count: int, seed: int) -> list[float]:
    """Arrival offsets in seconds of a Poisson process at ``rate`` per second: the first at 0, then exponential gaps."""
    if not rate > 0:
        raise ValueError(f"rate={rate!r} must be > 0")
    # Its own generator, derived from the seed: the prompt order and the arrivals do not disturb each other.
    rng = random.Random(f"poisson:{seed}")
    offsets = [0.0]
    for _ in range(count - 1):
        offsets.append(offsets[-1] + rng.expovariate(rate))
    return offsets[:count]
