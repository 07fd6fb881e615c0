"""Fuzzing the Prometheus text parser: ``parse_prometheus_text`` never raises (it skips malformed lines).

It documents no error class at all, because it runs on the OpenTelemetry SDK's collection thread:
any input, bytes decoded as the client decodes them, gives families or an empty dict.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fuzzing import TEST_TIMEOUT_S, examples, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from llamatelemetry_llamacpp.metrics_bridge import PrometheusFamily, instrument_name, parse_prometheus_text

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

#: A real /metrics answer of llama.cpp's server (xllamacpp, SmolLM2-135M, after two requests).
METRICS = (Path(__file__).parent / "data" / "metrics.prom").read_bytes()


def _check(families: dict[str, PrometheusFamily]) -> None:
    for name, family in families.items():
        assert family.name == name and isinstance(family.type, str) and instrument_name(family)
        for sample in family.samples:
            assert isinstance(sample.value, float) and not math.isnan(sample.value)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in sample.labels.items())


def test_the_real_metrics_parse() -> None:
    families = parse_prometheus_text(METRICS.decode())
    assert families["llamacpp:prompt_tokens_total"].type == "counter"
    assert families["llamacpp:prompt_tokens_total"].samples[0].value == 5.0
    assert len(families) >= 10


@settings(max_examples=examples(1000))
@given(body=st.binary(max_size=400))
def test_arbitrary_bytes(body: bytes) -> None:
    _check(parse_prometheus_text(body.decode("utf-8", "replace")))


@settings(max_examples=examples(1000))
@given(body=mutated(METRICS))
def test_mutated_real_metrics(body: bytes) -> None:
    _check(parse_prometheus_text(body.decode("utf-8", "replace")))


@settings(max_examples=examples(300))
@given(text=st.text(alphabet=st.sampled_from('{}="\\,# \nab:_0.1eE+-Inf'), max_size=200))
def test_punctuation_soup(text: str) -> None:
    _check(parse_prometheus_text(text))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@settings(max_examples=examples(500))
@given(labels=st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True), st.text(max_size=12),
                              max_size=4),
       value=st.floats(allow_nan=False) | st.integers(-10**15, 10**15))
def test_labels_and_values_round_trip(labels: dict[str, str], value: float) -> None:
    """What a Prometheus writer escapes (backslash, quote, newline) comes back as it was."""
    label_text = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
    line = f"llamacpp:fuzz{{{label_text}}} {value!r}\n" if labels else f"llamacpp:fuzz {value!r}\n"
    (sample,) = parse_prometheus_text("# TYPE llamacpp:fuzz gauge\n" + line)["llamacpp:fuzz"].samples
    assert dict(sample.labels) == labels
    assert sample.value == float(value)
