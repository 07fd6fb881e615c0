"""Chat templates: the prompt a llama-cpp-python chat handler builds, captured before any generation, as tokens."""

from __future__ import annotations

from typing import Any

from llamatelemetry.inference.base import InferenceRequest
from llamatelemetry_llamacpp.backend_errors import ChatTemplateError

__all__ = ["resolve_chat_handler", "prompt_tokens"]


class _PromptCaptured(Exception):
    """Raised by the capture proxy to carry the prompt a chat handler built, before any generation."""

    def __init__(self, prompt: Any, stop: Any) -> None:
        super().__init__("prompt captured")
        self.prompt = prompt
        self.stop = stop


class _PromptCapture:
    """Stands in for the Llama during a chat handler call: the handler formats and tokenizes, we keep the prompt."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any = None, **kwargs: Any) -> Any:
        raise _PromptCaptured(prompt, kwargs.get("stop"))


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str) and s]


def resolve_chat_handler(llama_cpp: Any, llm: Any) -> Any:
    """The handler ``create_chat_completion`` would use: the model's own template, or the chat_format given."""
    handler = llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
    if handler is None and llm.chat_format is not None:
        handler = llama_cpp.llama_chat_format.get_chat_completion_handler(llm.chat_format)
    return handler


def prompt_tokens(llm: Any, chat_handler: Any, model_name: str | None,
                  request: InferenceRequest) -> tuple[list[int], list[str]]:
    """The prompt of ``request`` as tokens, and its stop strings (the request's, or the chat template's)."""
    stops = list(request.sampling.stop)
    if request.operation == "text_completion":
        return llm.tokenize(request.prompt_text.encode("utf-8"), add_bos=True, special=True), stops
    if chat_handler is None:
        raise ChatTemplateError("The model has no chat template and no chat_format was given: pass "
                                "chat_format='chatml' (or the model's format) to LlamaCppBackend, or send "
                                "the request with operation='text_completion'.")
    try:
        chat_handler(llama=_PromptCapture(llm), messages=request.messages, stop=stops, max_tokens=1, stream=False)
    except _PromptCaptured as captured:
        prompt, stops = captured.prompt, _stop_list(captured.stop)
    except Exception as exc:
        raise ChatTemplateError(f"The chat template of {model_name!r} (chat_format="
                                f"{llm.chat_format!r}) rejected the messages: {type(exc).__name__}: {exc}. Fix "
                                "the messages (some templates need alternating user/assistant roles or no system "
                                "message), pass chat_format= or chat_handler= to LlamaCppBackend, or send the "
                                "request with operation='text_completion'.") from exc
    else:
        raise ChatTemplateError(f"The chat handler of {model_name!r} (chat_format={llm.chat_format!r}) "
                                "does not build a text prompt, so this backend cannot run it: use a text chat "
                                "format or operation='text_completion'.")
    if isinstance(prompt, str):
        return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True), stops
    return [int(t) for t in prompt], stops

