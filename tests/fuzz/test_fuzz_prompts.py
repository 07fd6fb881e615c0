"""Fuzzing the prompt-file reader: ``load_prompts`` returns prompts or raises ``PromptFileError``, nothing else.

``PromptFileError`` (a ``ValueError``) names the file and the line; ``as_prompts`` turns the same
problems in an in-memory list into a ``ValueError``. Arbitrary bytes, mutated real files and JSON of
any shape are all covered; what a JSON writer wrote comes back exactly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fuzzing import TEST_TIMEOUT_S, examples, json_values, mutated
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llamatelemetry.bench.prompts import Prompt, PromptFileError, as_prompts, load_prompts

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

_SCRATCH = Path(tempfile.mkdtemp(prefix="llamatelemetry-fuzz-prompts-")) / "prompts.jsonl"

#: A real prompt file in each of the documented forms (the bench docs' example, plus comments and blanks).
REAL = (b'# prompts for the nightly run\n"Summarize the plot of Hamlet in one sentence."\n\n'
        b'{"id": "long-1", "prompt": "Explain KV caching, step by step.", "max_tokens": 256}\n'
        b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}\n'
        b'{"id": 7, "prompt": "caf\\u00e9 \xe2\x80\xa8 na\xc3\xafve"}\r\n')


def _load(content: bytes) -> list[Prompt] | None:
    _SCRATCH.write_bytes(content)
    try:
        prompts = load_prompts(_SCRATCH)
    except PromptFileError as exc:
        assert str(_SCRATCH) in str(exc) or "prompts" in str(exc)
        return None
    assert prompts and all(isinstance(p, Prompt) and p.messages for p in prompts)
    for prompt in prompts:
        prompt.text  # noqa: B018 - computable for every prompt read
    return prompts


def test_the_real_file_loads() -> None:
    prompts = _load(REAL)
    assert prompts is not None and [p.id for p in prompts] == ["prompts-2", "long-1", "prompts-5", "7"]
    assert prompts[1].max_tokens == 256 and prompts[3].text == "café \u2028 naïve"


@settings(max_examples=examples(500))
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    _load(body)


@settings(max_examples=examples(500))
@given(body=mutated(REAL))
def test_mutated_real_file(body: bytes) -> None:
    _load(body)


@settings(max_examples=examples(300))
@given(values=st.lists(json_values(), min_size=1, max_size=4))
@example(values=[{"prompt": "x", "max_tokens": 1e400}])
@example(values=[{"messages": [{"role": "user", "content": "x"}], "max_tokens": True}])
@example(values=[{"prompt": "x", "id": {"a": [1]}}])
def test_json_of_any_shape(values: list[Any]) -> None:
    _load("\n".join(json.dumps(v) for v in values).encode())
    try:
        as_prompts(values)
    except ValueError:
        pass


def test_deeply_nested_json_is_a_prompt_file_error() -> None:
    with pytest.raises(PromptFileError, match=":1:"):
        load_prompts(_write(b"[" * 100_000 + b"]" * 100_000))


@settings(max_examples=examples(500))
@given(texts=st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=5),
       ascii_only=st.booleans())
def test_written_prompts_come_back(texts: list[str], ascii_only: bool) -> None:
    """One JSON string per line, as json.dumps writes it (raw U+2028, U+0085 with ensure_ascii=False)."""
    prompts = _load("\n".join(json.dumps(t, ensure_ascii=ascii_only) for t in texts).encode())
    assert prompts is not None and [p.messages[0]["content"] for p in prompts] == texts


def _write(content: bytes) -> Path:
    _SCRATCH.write_bytes(content)
    return _SCRATCH
