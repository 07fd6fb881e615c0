"""The inference contract: what a request holds, what a result reports, and the ``LLMBackend`` protocol."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from llamatelemetry.errors import ValidationError
from llamatelemetry.inference.types import SamplingParams

__all__ = ["InferenceRequest", "InferenceResult", "LLMBackend", "MESSAGE_ROLES"]

MESSAGE_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")


def _messages(value: Any) -> list[dict[str, Any]]:
    allowed = 'a non-empty list of {"role": ..., "content": ...} dicts'
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        # Never echo the value: it may be a prompt.
        raise ValidationError("InferenceRequest", "messages", f"<{type(value).__name__}>", allowed)
    if not value:
        raise ValidationError("InferenceRequest", "messages", [], allowed)
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValidationError("InferenceRequest", f"messages[{index}]", f"<{type(message).__name__}>",
                                  'a dict with "role" and "content"')
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise ValidationError("InferenceRequest", f"messages[{index}].role", role,
                                  f"one of {', '.join(MESSAGE_ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ValidationError("InferenceRequest", f"messages[{index}].content", f"<{type(content).__name__}>",
                                  "a string or a list of content parts")
        messages.append(dict(message))
    return messages


def _new_request_id() -> str:
    return uuid.uuid4().hex


@attrs.frozen
class InferenceRequest:
    """One generation request, backend-independent and validated on construction.

    Example::

        InferenceRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=32,
                         sampling=SamplingParams(temperature=0.0))
    """

    messages: list[dict[str, Any]] = attrs.field(converter=_messages)
    max_tokens: int = 256
    sampling: SamplingParams = attrs.field(factory=SamplingParams)
    request_id: str = attrs.field(factory=_new_request_id)
    #: The model asked for; backends that serve one model may ignore it.
    model: str | None = None
    stream: bool = False
    conversation_id: str | None = None
    #: ``"chat"`` applies the chat template; ``"text_completion"`` sends the concatenated contents raw.
    operation: Literal["chat", "text_completion"] = "chat"

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValidationError("InferenceRequest", "max_tokens", self.max_tokens, "an integer >= 1")
        if not isinstance(self.sampling, SamplingParams):
            raise ValidationError("InferenceRequest", "sampling", f"<{type(self.sampling).__name__}>",
                                  "a SamplingParams instance")
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValidationError("InferenceRequest", "request_id", self.request_id, "a non-empty string")
        if self.operation not in ("chat", "text_completion"):
            raise ValidationError("InferenceRequest", "operation", self.operation, "'chat' or 'text_completion'")

    @property
    def prompt_text(self) -> str:
        """The text contents of the messages joined by newlines (for raw text completion)."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return "\n".join(parts)


@attrs.frozen
class InferenceResult:
    """What a backend measured and produced for one request.

    Figures a backend cannot know are ``None``, never a made-up 0 (``vram_peak_mb`` on a CPU, for
    example). Times are milliseconds, rates are per second.
    """

    text: str
    ttft_ms: float | None = None
    tps: float | None = None
    vram_peak_mb: float | None = None
    prefill_tps: float | None = None
    queue_delay_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Prompt tokens served from a cache (llama.cpp ``timings.cache_n``); included in ``input_tokens``.
    cached_input_tokens: int | None = None
    decode_tps: float | None = None
    total_ms: float | None = None
    #: Semantic-convention finish reason: ``stop``, ``length``, ``content_filter``, ``tool_call``, ``error``.
    finish_reason: str | None = None
    model: str | None = None
    response_id: str | None = None
    #: The request's ``request_id``: every backend copies it from the request (the conformance suite checks).
    request_id: str | None = None
    #: Backend-specific span attributes (llama.cpp timings, for instance) recorded on the request span.
    attributes: Mapping[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class LLMBackend(Protocol):
    """What every backend implements: start, generate, shutdown.

    A backend may also define these attributes, which the engine puts on its spans:
    ``provider_name`` (``gen_ai.provider.name``), ``model_name``, ``server_address``,
    ``server_port``, ``span_kind`` (``"client"`` for a server over HTTP, else ``"internal"``), and
    ``span_attributes`` (a mapping put on every request span, e.g. the served model's GGUF facts).
    Run ``llamatelemetry.testing.BackendConformance`` against an implementation to check it.

    Example::

        class MyBackend(LLMBackend):
            provider_name = "my_engine"

            def start(self) -> None: ...
            def generate(self, request: InferenceRequest) -> InferenceResult: ...
            def shutdown(self) -> None: ...
    """

    def start(self) -> None:
        """Load the model or connect to the server; raise a clear error if it cannot."""
        ...

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Generate a completion for ``request`` (called only after ``start``)."""
        ...

    def shutdown(self) -> None:
        """Release the model, connections and processes; calling it twice is harmless."""
        ...
