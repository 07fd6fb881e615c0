"""Benchmark prompts: the built-in set of varied lengths, JSONL prompt files, and the seeded request plan.

A JSONL prompt file has one JSON value per line: a string (the user message), or an object with
``"prompt"`` (a string) or ``"messages"`` (chat messages), and optionally ``"id"`` and
``"max_tokens"`` (overrides the run's ``n_tokens`` for that prompt). Blank lines and lines
starting with ``#`` are skipped::

    "Summarize the plot of Hamlet in one sentence."
    {"id": "long-1", "prompt": "...", "max_tokens": 256}
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from llamatelemetry.errors import LlamaTelemetryError

__all__ = ["Prompt", "PromptFileError", "BUILTIN_PROMPTS", "builtin_prompts", "load_prompts", "as_prompts",
           "plan_requests", "WARMUP_PROMPT"]


class PromptFileError(LlamaTelemetryError, ValueError):
    """A prompt file cannot be read; the message names the file and the line."""


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    return tuple(dict(m) for m in value)


@attrs.frozen
class Prompt:
    """One prompt of a benchmark: chat messages, an id for the report, and an optional output length.

    Example::

        Prompt.of("Explain KV caching.", id="kv")
    """

    id: str
    messages: tuple[Mapping[str, Any], ...] = attrs.field(converter=_messages)
    #: Tokens to generate for this prompt; ``None`` uses the run's ``n_tokens``.
    max_tokens: int | None = None
    #: ``"short"``, ``"medium"``, ``"long"`` for the built-in set; ``None`` for a user's prompt.
    length_class: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.messages:
            raise ValueError(f"prompt {self.id!r} has no messages")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise ValueError(f"prompt {self.id!r}: max_tokens must be an integer >= 1, not {self.max_tokens!r}")

    @classmethod
    def of(cls, text: str, *, id: str, max_tokens: int | None = None) -> Prompt:
        """A single user message."""
        return cls(id=id, messages=({"role": "user", "content": text},), max_tokens=max_tokens)

    @property
    def text(self) -> str:
        """The messages' text contents joined by newlines (what a raw text completion sends)."""
        return "\n".join(str(m.get("content") or "") for m in self.messages)


def _builtin() -> tuple[Prompt, ...]:
    short = [
        "What is a token in a language model?",
        "Name three uses of a GPU besides graphics.",
        "Write a haiku about a quiet data center.",
        "Tell me a short story about a fox and the moon.",
    ]
    medium = [
        "Explain, for a software engineer who has never trained a model, what the difference is between the "
        "prefill phase and the decode phase of language model inference, and why the first is usually limited "
        "by compute while the second is limited by memory bandwidth.",
        "A team serves a chat assistant on one GPU and users complain that answers start slowly at lunch time. "
        "List the measurements you would collect first, in order, and say what each one would tell you about "
        "where the delay comes from.",
        "Describe how a key-value cache speeds up text generation in a transformer, what it costs in memory, and "
        "what happens when many users share one server with a limited number of parallel slots.",
        "Compare three ways of making a large language model fit on a small GPU: quantization, offloading layers "
        "to the CPU, and a smaller model. Give one advantage and one drawback of each.",
    ]
    long = [
        "You are reviewing an incident report. At 09:12 the inference service began returning slow responses. "
        "The dashboard showed time to first token rising from 180 milliseconds to more than four seconds while "
        "the number of requests per second stayed flat. GPU utilization was close to one hundred percent, memory "
        "use was steady, and the server log showed many requests waiting for a free slot. At 09:40 an engineer "
        "doubled the number of parallel slots and halved the context size of each one; the time to first token "
        "fell to 600 milliseconds, but some long conversations started failing with context size errors. At "
        "10:05 the change was rolled back and a second GPU was added behind a load balancer, after which every "
        "figure returned to normal. Write a short summary of what happened, explain the likely root cause, "
        "judge whether each of the two interventions was reasonable, and propose two alerts that would have "
        "caught the problem before users noticed it.",
        "The following is a description of a small benchmark plan. We want to compare two quantized versions of "
        "the same model, one with four-bit weights and one with eight-bit weights, on a single consumer GPU. "
        "Each version will be served by the same server build with the same number of parallel slots. We will "
        "send a fixed set of prompts of three lengths, at one, two and four concurrent streams, and record time "
        "to first token, the gaps between streamed chunks, end-to-end latency, and output tokens per second. "
        "We will also record peak GPU memory and the energy used per generated token. Every run is repeated "
        "three times and the prompt cache is disabled so that each request is measured cold. Point out any "
        "weaknesses of this plan, say which results you expect for each version, and describe how you would "
        "decide which version to deploy if the faster one also used more energy per token.",
        "Once upon a time there was a lighthouse keeper who kept a notebook of every ship that passed the rocks "
        "below the tower. For thirty years she wrote down the name of each ship, the weather, the time it "
        "appeared on the horizon and the time it vanished again. One winter a young clerk from the harbour "
        "office arrived to collect the notebooks, because the harbour had decided to replace the keeper with an "
        "automatic lamp and a radio beacon. The clerk began to read the notebooks on the long boat ride back to "
        "town and found that they told a story nobody in the office knew: which captains were always late, "
        "which ships had changed their names, and which storms had nearly sunk them. Continue the story from the "
        "moment the clerk reaches the harbour office, in about two hundred words, and end it with a decision the "
        "clerk makes about the notebooks.",
        "Explain to a new member of an operations team how to read a latency report for a language model "
        "server. The report lists, for each level of concurrency, the mean, median, ninetieth and ninety-ninth "
        "percentile of time to first token, of the time between streamed chunks, and of end-to-end latency, "
        "together with requests per second, output tokens per second and the number of errors of each type. "
        "Cover what each figure measures, why the ninety-ninth percentile matters more than the mean for users, "
        "why throughput usually rises with concurrency while latency also rises, how to spot the point where "
        "the server is saturated, and why a result that looks too good, such as a very low time to first token, "
        "may come from the server's prompt cache rather than from real speed.",
    ]
    prompts: list[Prompt] = []
    for length_class, texts in (("short", short), ("medium", medium), ("long", long)):
        for index, text in enumerate(texts, start=1):
            prompts.append(Prompt(id=f"{length_class}-{index}", messages=text, length_class=length_class))
    return tuple(prompts)


#: Twelve prompts: four short (about 10 words), four medium (about 45), four long (about 170).
BUILTIN_PROMPTS: tuple[Prompt, ...] = _builtin()

#: Sent by warm-up requests; not in any prompt set, so it never primes the prompt cache for a measured prompt.
WARMUP_PROMPT = Prompt.of("Warm-up request: reply with a few words.", id="warmup")


def builtin_prompts(length_class: str | None = None) -> list[Prompt]:
    """The built-in prompts, all or one length class (``short``, ``medium``, ``long``)."""
    if length_class is None:
        return list(BUILTIN_PROMPTS)
    chosen = [p for p in BUILTIN_PROMPTS if p.length_class == length_class]
    if not chosen:
        raise ValueError(f"length_class={length_class!r}: use short, medium or long")
    return chosen


def _prompt_from_json(value: Any, default_id: str, where: str) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(f"{where}: the prompt is empty.")
        return Prompt.of(value, id=default_id)
    if not isinstance(value, Mapping):
        raise PromptFileError(f"{where}: expected a string or an object with \"prompt\" or \"messages\", "
                              f"got {type(value).__name__}.")
    prompt_id = str(value.get("id", default_id))
    max_tokens = value.get("max_tokens")
    if "messages" in value:
        messages = value["messages"]
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, Mapping) and "role" in m for m in messages)):
            raise PromptFileError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} "
                                  "objects.")
        source: Any = messages
    elif isinstance(value.get("prompt"), str) and value["prompt"].strip():
        source = value["prompt"]
    else:
        raise PromptFileError(f"{where}: the object needs a non-empty \"prompt\" string or a \"messages\" list.")
    try:
        return Prompt(id=prompt_id, messages=source, max_tokens=max_tokens)
    except ValueError as exc:
        raise PromptFileError(f"{where}: {exc}.") from None


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read a JSONL prompt file (see the module docstring); errors name the file and line.

    Raises ``PromptFileError`` for anything wrong with the file (missing, not UTF-8, a line that is
    not JSON or not a prompt, no prompts at all) and nothing else, whatever its bytes.
    """
    file = Path(path).expanduser()
    try:
        # JSON Lines end at \n only; splitlines() would also cut a JSON string holding a raw U+2028 or U+0085.
        lines = file.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise PromptFileError(f"Prompt file not found: {file}.") from None
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{file}:{number}"
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: not JSON ({exc.msg}); write one JSON string or object per line."
                                  ) from None
        except RecursionError:
            raise PromptFileError(f"{where}: the JSON is nested too deeply to read; write one JSON string or "
                                  "object per line.") from None
        prompts.append(_prompt_from_json(value, f"{file.stem}-{number}", where))
    if not prompts:
        raise PromptFileError(f"{file} holds no prompts.")
    return prompts


def as_prompts(prompts: Iterable[str | Prompt | Mapping[str, Any]] | None) -> list[Prompt]:
    """Prompts from strings, ``Prompt`` objects or JSONL-style dicts; ``None`` gives the built-in set."""
    if prompts is None:
        return list(BUILTIN_PROMPTS)
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a list of prompts, not one string: pass [text].")
    result: list[Prompt] = []
    for index, item in enumerate(prompts):
        if isinstance(item, Prompt):
            result.append(item)
        else:
            try:
                result.append(_prompt_from_json(item, f"prompt-{index + 1}", f"prompts[{index}]"))
            except PromptFileError as exc:
                raise ValueError(str(exc)) from None
    if not result:
        raise ValueError("prompts is empty: pass at least one prompt, or None for the built-in set.")
    return result


def plan_requests(prompts: Sequence[Prompt], num_requests: int, seed: int) -> list[Prompt]:
    """Which prompt each request sends: whole passes over the set, each pass shuffled with ``seed``."""
    if num_requests < 1:
        raise ValueError(f"num_requests={num_requests} must be at least 1")
    rng = random.Random(seed)
    plan: list[Prompt] = []
    while len(plan) < num_requests:
        # Whole shuffled passes keep the length mix of the set in every stretch of the run.
        order = list(prompts)
        rng.shuffle(order)
        plan.extend(order)
    return plan[:num_requests]
