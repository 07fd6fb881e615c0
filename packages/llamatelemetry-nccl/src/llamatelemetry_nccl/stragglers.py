"""Who arrived last: arrival times exchanged every K collectives on a separate gloo group, off the hot path.

The trap this avoids: the rank that waits shows the long duration and the straggler the short one,
so ranking ranks by duration blames the wrong one. With clocks the ranks share (one host, or
``trust_clocks=True``) the skew is last arrival - first arrival; otherwise it falls back to
duration differences (the straggler is the one with the *shortest* duration).
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs

log = logging.getLogger("llamatelemetry.nccl")

SOURCE_CLOCK = "clock"
SOURCE_DURATION = "duration"


@attrs.frozen
class Arrival:
    """One collective's arrival across ranks: skew (s), the rank that came last, this rank's wait (s).

    Example::

        Arrival(skew_s=0.05, last_rank=1, wait_s=0.05, source="clock")
    """

    skew_s: float
    last_rank: int
    wait_s: float
    source: str


def host_key(hostname: str) -> int:
    """A 31-bit fingerprint of the host name: ranks whose fingerprints agree share a clock."""
    return zlib.crc32(hostname.encode()) & 0x7FFFFFFF


def arrivals(rows: Sequence[Sequence[int]], my_index: int, trust_clocks: bool | None) -> list[Arrival]:
    """Per op, from each rank's row ``[host, n, t0_1..t0_K, dur_1..dur_K]`` (ns); rows are in global-rank order."""
    if not rows:
        return []
    width = (len(rows[0]) - 2) // 2
    n_ops = min(int(row[1]) for row in rows)
    same_host = len({int(row[0]) for row in rows}) == 1
    clock = same_host if trust_clocks is None else trust_clocks
    result: list[Arrival] = []
    for i in range(n_ops):
        if clock:
            starts = [int(row[2 + i]) for row in rows]
            last = max(range(len(starts)), key=starts.__getitem__)
            skew = (starts[last] - min(starts)) / 1e9
            wait = max(starts[last] - starts[my_index], 0) / 1e9
            result.append(Arrival(skew, last, wait, SOURCE_CLOCK))
        else:
            durations = [int(row[2 + width + i]) for row in rows]
            last = min(range(len(durations)), key=durations.__getitem__)
            skew = (max(durations) - durations[last]) / 1e9
            wait = max(durations[my_index] - durations[last], 0) / 1e9
            result.append(Arrival(skew, last, wait, SOURCE_DURATION))
    return result


class ArrivalExchange(threading.Thread):
    """Exchanges one block of (arrival, duration) pairs per call on the side group, in block order, on its own thread.

    Every rank seals the same blocks in the same order (K ops of the default group, or a step's end), so
    the exchanges line up. A block that times out (a rank stopped issuing) disables the exchange.
    """

    def __init__(self, group: Any, width: int, my_index: int, host: int, trust_clocks: bool | None,
                 deliver: Callable[[list[Any], list[Arrival]], None], gather: Callable[[Any, Any, Any], None],
                 torch: Any) -> None:
        super().__init__(name="llamatelemetry-nccl-arrivals", daemon=True)
        self._group = group
        self._width = width
        self._my_index = my_index
        self._host = host
        self._trust = trust_clocks
        self._deliver = deliver
        self._gather = gather
        self._torch = torch
        self._blocks: queue.Queue[list[Any] | None] = queue.Queue()
        self.failed = False

    def submit(self, block: list[Any]) -> None:
        """Queue a sealed block (records with ``t0``, ``t1``) for exchange."""
        self._blocks.put(block)

    def stop(self) -> None:
        """Stop after the blocks already queued."""
        self._blocks.put(None)

    def run(self) -> None:
        torch = self._torch
        width = self._width
        while True:
            block = self._blocks.get()
            if block is None or self.failed:
                return
            row = [0] * (2 + 2 * width)
            row[0] = self._host
            row[1] = len(block)
            for i, record in enumerate(block[:width]):
                row[2 + i] = record.t0
                row[2 + width + i] = max(record.t1 - record.t0, 0)
            mine = torch.tensor(row, dtype=torch.int64)
            size = self._group.size()
            out = torch.zeros(size * len(row), dtype=torch.int64)
            try:
                self._gather(out, mine, self._group)
            except Exception as exc:
                self.failed = True
                log.warning("Arrival-time exchange failed (%s: %s); collectives keep being traced, without "
                            "arrival skew from now on.", type(exc).__name__, exc)
                self._deliver(block, [])
                return
            rows = out.view(size, len(row)).tolist()
            self._deliver(block, arrivals(rows, self._my_index, self._trust))
