"""Shared by the parser fuzz tests: hypothesis profiles (quick in the suite, long for ``nox -s fuzz``) and
strategies (mutations of a real input, any JSON value).

``LLAMATELEMETRY_FUZZ=1`` selects the long profile: each test runs ``FUZZ_SCALE`` times its normal
number of examples, with fresh random inputs (the normal profile is derandomized so that CI is
repeatable; the long run is where new inputs are explored).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: The long run's multiplier on each test's example count.
FUZZ_SCALE = 25
LONG_RUN = os.environ.get("LLAMATELEMETRY_FUZZ", "") not in ("", "0")
#: pytest-timeout per test: a hang fails the test instead of holding the run.
TEST_TIMEOUT_S = 1800 if LONG_RUN else 120

# A parser handles one small input in microseconds; a 2 s deadline only trips on a real hang or blow-up
# (never on a busy 2-core machine), and pytest-timeout (see each module's mark) ends a true infinite loop.
settings.register_profile("llamatelemetry", deadline=timedelta(seconds=2), derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("llamatelemetry-fuzz", deadline=timedelta(seconds=5), derandomize=False, database=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("llamatelemetry-fuzz" if LONG_RUN else "llamatelemetry")


def examples(normal: int) -> int:
    """How many examples a test runs: ``normal`` in the suite, ``FUZZ_SCALE`` times that in the long run."""
    return normal * FUZZ_SCALE if LONG_RUN else normal


#: Bytes that matter to the formats fuzzed here: separators, quotes, escapes, JSON/label punctuation.
_INTERESTING = [b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"=",
                b"#", b" ", b"data:", b"error:", b"[DONE]", b"\xe2\x80\xa8", b"\xc2\x85", b"NaN", b"-1", b"1e999"]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_edits: int = 8) -> bytes:
    """``base`` with a few random edits: delete, insert, overwrite, duplicate a span, truncate."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["delete", "insert", "overwrite", "duplicate", "truncate", "flip"]))
        at = draw(st.integers(0, len(data)))
        if kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=16))
        elif kind == "overwrite":
            piece = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(piece)] = piece
        elif kind == "duplicate":
            end = min(len(data), at + draw(st.integers(1, 256)))
            data[at:at] = data[at:end]
        elif kind == "truncate":
            del data[at:]
        elif at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (nested lists and objects of scalars), including the odd ones: NaN, huge ints, empty keys."""
    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=12))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=max_leaves)
