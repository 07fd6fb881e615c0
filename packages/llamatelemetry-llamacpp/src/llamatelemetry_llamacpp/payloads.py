"""Request building: one ``ApiCall`` per chat, text-completion or embeddings call, the same for both clients.

Example::

    call = chat_call([{"role": "user", "content": "Hi"}], model=None, max_tokens=8, stream=True)
    call.path, call.payload["stream_options"]   # '/v1/chat/completions', {'include_usage': True}

An ``ApiCall`` also says what the request recorder needs to know about the call: its sampling
attributes, its prompt messages for content capture, and the ``InferenceRequest`` the request
hooks see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv.mapping import SAMPLING_KEYS

__all__ = ["ApiCall", "chat_call", "completion_call", "embeddings_call", "CHAT_PATH", "COMPLETION_PATH",
           "EMBEDDINGS_PATH"]

CHAT_PATH: Final = "/v1/chat/completions"
COMPLETION_PATH: Final = "/completion"
EMBEDDINGS_PATH: Final = "/v1/embeddings"

@attrs.frozen
class ApiCall:
    """One generation call to the server: its operation, its route and the JSON body sent."""

    #: ``chat``, ``text_completion`` or ``embeddings`` (``gen_ai.operation.name``).
    operation: str
    path: str
    payload: dict[str, Any] = attrs.field(repr=False)

    @property
    def stream(self) -> bool:
        """Whether the server is asked to stream the answer."""
        return bool(self.payload.get("stream"))

    @property
    def model(self) -> str | None:
        """The model asked for (``None``: the server's own)."""
        model = self.payload.get("model")
        return model if isinstance(model, str) and model else None

    def sampling(self) -> dict[str, Any]:
        """The payload's limit and sampling settings, by the names the core's recorder maps to attributes."""
        payload = self.payload
        settings = {key: payload.get(key) for key in SAMPLING_KEYS}
        if settings["max_tokens"] is None:
            settings["max_tokens"] = payload.get("n_predict")  # /completion's name for it
        return settings

    def input_messages(self) -> Sequence[Mapping[str, Any]] | None:
        """The prompt as chat messages, for content capture (``None`` for embeddings and token-id prompts)."""
        if self.operation == gen_ai.OPERATION_CHAT:
            messages = self.payload.get("messages")
            return messages if isinstance(messages, list) else None
        prompt = self.payload.get("prompt")
        if self.operation == gen_ai.OPERATION_TEXT_COMPLETION and isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return None

    def inference_request(self, model: str | None) -> InferenceRequest | None:
        """The call as the request hooks see it (``None`` for embeddings or a call that cannot be one)."""
        if self.operation == gen_ai.OPERATION_EMBEDDINGS:
            return None
        from llamatelemetry.inference.recording import request_from_payload

        return request_from_payload(self.operation, self.payload, model)


def _stop_list(stop: str | Sequence[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def chat_call(messages: Sequence[Mapping[str, Any]], *, model: str | None = None, max_tokens: int | None = None,
              temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
              stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
              cache_prompt: bool | None = None, extra: Mapping[str, Any] | None = None) -> ApiCall:
    """A ``/v1/chat/completions`` call; only the settings given are sent (the server defaults the rest)."""
    payload: dict[str, Any] = {"messages": [dict(m) for m in messages]}
    for key, value in (("model", model), ("max_tokens", max_tokens), ("temperature", temperature),
                       ("top_p", top_p), ("top_k", top_k), ("seed", seed), ("cache_prompt", cache_prompt),
                       ("stop", _stop_list(stop))):
        if value is not None:
            payload[key] = value
    if stream:
        payload["stream"] = True
        # Without it a chat stream carries no usage; the exact counts matter more than one extra event.
        payload["stream_options"] = {"include_usage": True}
    if extra:
        payload.update(extra)
    return ApiCall(gen_ai.OPERATION_CHAT, CHAT_PATH, payload)


def completion_call(prompt: str | Sequence[int], *, n_predict: int | None = None, temperature: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, stop: str | Sequence[str] | None = None,
                    seed: int | None = None, stream: bool = False, cache_prompt: bool | None = None,
                    extra: Mapping[str, Any] | None = None) -> ApiCall:
    """A call of llama.cpp's native ``/completion`` (raw text or token ids, no chat template)."""
    payload: dict[str, Any] = {"prompt": prompt if isinstance(prompt, str) else list(prompt)}
    for key, value in (("n_predict", n_predict), ("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                       ("seed", seed), ("cache_prompt", cache_prompt), ("stop", _stop_list(stop))):
        if value is not None:
            payload[key] = value
    if stream:
        payload["stream"] = True
    if extra:
        payload.update(extra)
    return ApiCall(gen_ai.OPERATION_TEXT_COMPLETION, COMPLETION_PATH, payload)


def embeddings_call(input: str | Sequence[str], *, model: str | None = None,
                    extra: Mapping[str, Any] | None = None) -> ApiCall:
    """A ``/v1/embeddings`` call for one text or several."""
    payload: dict[str, Any] = {"input": input if isinstance(input, str) else list(input)}
    if extra:
        payload.update(extra)
    if model:
        payload["model"] = model
    return ApiCall(gen_ai.OPERATION_EMBEDDINGS, EMBEDDINGS_PATH, payload)
