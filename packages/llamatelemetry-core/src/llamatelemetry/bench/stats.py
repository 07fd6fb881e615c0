"""Order statistics for benchmark figures: ``Distribution`` (mean, p50, p90, p99, min, max) and ``percentile``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs

__all__ = ["Distribution", "percentile", "max_overlap"]


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, interpolated linearly (numpy's default)."""
    if not sorted_values:
        raise ValueError("percentile() of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} must be within 0..100")
    position = (len(sorted_values) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    fraction = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * fraction


def _round(value: float | None) -> float | None:
    # Microsecond resolution for milliseconds is more than any clock here gives; it keeps reports small.
    return None if value is None else round(value, 4)


@attrs.frozen
class Distribution:
    """Summary of one measured quantity over a test's requests (or over every gap between chunks).

    ``count`` is how many values there were; every other figure is ``None`` when there were none.

    Example::

        Distribution.of([12.0, 15.5, 11.2]).p90   # 14.78
    """

    count: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    stdev: float | None = None

    #: The statistics a report shows and compares, in order.
    STATS: ClassVar[tuple[str, ...]] = ("mean", "p50", "p90", "p99", "min", "max")

    @classmethod
    def of(cls, values: Iterable[float | int | None]) -> Distribution:
        """Summarize ``values`` (``None`` entries are ignored: a figure the backend could not know)."""
        data = sorted(float(v) for v in values if v is not None and math.isfinite(v))
        if not data:
            return cls(count=0)
        # Plain arithmetic: the statistics module would pull in fractions, decimal and random at import.
        mean = math.fsum(data) / len(data)
        stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (len(data) - 1)) if len(data) > 1 else 0.0
        return cls(
            count=len(data), mean=_round(mean), p50=_round(percentile(data, 50)),
            p90=_round(percentile(data, 90)), p99=_round(percentile(data, 99)), min=_round(data[0]),
            max=_round(data[-1]), stdev=_round(stdev),
        )

    def get(self, stat: str) -> float | None:
        """One statistic by name (``"p99"``); an unknown name raises ``KeyError``."""
        if stat not in (*self.STATS, "stdev"):
            raise KeyError(f"{stat!r} is not a statistic: use one of {', '.join(self.STATS)}, stdev")
        value: float | None = getattr(self, stat)
        return value

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        """Read the JSON form."""
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant (an end closes before a start)."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        if end < start:
            raise ValueError(f"interval ends ({end}) before it starts ({start})")
        events += [(start, 1), (end, -1)]
    # At equal times the end sorts first: back-to-back requests do not overlap.
    events.sort(key=lambda e: (e[0], e[1]))
    open_now = best = 0
    for _, delta in events:
        open_now += delta
        best = max(best, open_now)
    return best
