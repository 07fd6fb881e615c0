"""Bytes and bandwidth of a collective as nccl-tests defines them (``algbw = S / t``, ``busbw = algbw x factor``).

S is the per-rank buffer for all_reduce, broadcast, reduce and point-to-point, and the whole array
(count x element size x n) for all_gather, reduce_scatter and all_to_all. The bus factor turns the
algorithm bandwidth into what each link carried, comparable with the hardware's peak.
"""

from __future__ import annotations

#: Ops whose S is the whole array (n chunks).
WHOLE_ARRAY_OPS = frozenset({"all_gather", "reduce_scatter", "all_to_all", "gather", "scatter"})
#: Ops whose bus factor is (n - 1) / n.
SHARDED_OPS = frozenset({"all_gather", "reduce_scatter", "all_to_all", "gather", "scatter"})
#: Ops whose bus factor is 1.
FACTOR_ONE_OPS = frozenset({"broadcast", "reduce", "send", "recv"})


def bus_factor(op: str, group_size: int) -> float | None:
    """nccl-tests' bus factor of ``op`` on ``group_size`` ranks; ``None`` for one rank or an op with no bandwidth."""
    n = group_size
    if n <= 1:
        return None
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in SHARDED_OPS:
        return (n - 1) / n
    if op in FACTOR_ONE_OPS:
        return 1.0
    return None


def collective_bytes(op: str, rank_bytes: int, group_size: int) -> int:
    """S for ``op``: ``rank_bytes`` is one rank's chunk (all_gather input, reduce_scatter output) or buffer."""
    if op in WHOLE_ARRAY_OPS and op not in ("all_to_all",):
        return rank_bytes * max(group_size, 1)
    return rank_bytes


def bandwidths(op: str, nbytes: int, group_size: int, seconds: float) -> tuple[float, float, float] | None:
    """``(algbw, busbw, factor)`` in bytes/s, or ``None`` when they are not defined (one rank, no bytes, no time)."""
    factor = bus_factor(op, group_size)
    if factor is None or nbytes <= 0 or seconds <= 0:
        return None
    algbw = nbytes / seconds
    return algbw, algbw * factor, factor


def size_bucket(nbytes: int) -> str:
    """The power-of-two bucket a size falls in (``"0B"``, ``"1KiB"``, ``"64MiB"``): a low-cardinality attribute."""
    if nbytes <= 0:
        return "0B"
    bucket = 1 << (nbytes - 1).bit_length()
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if bucket >= 1 << shift:
            return f"{bucket >> shift}{unit}"
    return f"{bucket}B"
