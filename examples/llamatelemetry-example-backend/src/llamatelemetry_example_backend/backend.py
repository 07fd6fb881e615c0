"""``OpenAICompatibleBackend``: an ``LLMBackend`` over ``/v1/chat/completions`` with streamed TTFT."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from llamatelemetry.errors import BackendNotStartedError, ServerUnavailableError
from llamatelemetry.inference import InferenceRequest, InferenceResult
from llamatelemetry.semconv import gen_ai


class OpenAICompatibleBackend:
    """Chat over any OpenAI-compatible server, streaming so time to first token is measured for real.

    The engine that wraps it records the request span; this class only reports what it measured
    in ``InferenceResult`` (and the time to first chunk as an extra attribute).
    """

    provider_name = "openai_compatible"
    span_kind = "client"

    def __init__(self, base_url: str = "http://127.0.0.1:8080", *, model: str | None = None,
                 api_key: str | None = None, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        self.server_address = parsed.hostname
        self.server_port = parsed.port
        self.model_name = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._http: Any = None

    def start(self) -> None:
        """Open the connection pool and check the server answers."""
        import httpx

        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        try:
            models = self._http.get("/v1/models")
            models.raise_for_status()
        except httpx.HTTPError as exc:
            self.shutdown()
            raise ServerUnavailableError(self.base_url, str(exc), message=(
                f"No OpenAI-compatible server answered at {self.base_url}: {exc}. Start it, or pass the right "
                "base_url.")) from exc
        if self.model_name is None:
            data = models.json().get("data") or [{}]
            self.model_name = data[0].get("id")

    def generate(self, request: InferenceRequest) -> InferenceResult:
        """Stream one chat completion and report text, exact usage, TTFT and finish reason."""
        if self._http is None:
            raise BackendNotStartedError("OpenAICompatibleBackend is not started: call start() before generate().")
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": request.model or self.model_name, "messages": request.messages,
            "max_tokens": request.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "stream": True, "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish: str | None = None
        response_id = model = None
        with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                response_id, model = chunk.get("id", response_id), chunk.get("model", model)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        parts.append(text)
                    finish = choice.get("finish_reason") or finish
        total = time.perf_counter() - started
        output_tokens = usage.get("completion_tokens")
        ttft_ms = (first - started) * 1e3 if first is not None else None
        return InferenceResult(
            text="".join(parts), ttft_ms=ttft_ms, total_ms=total * 1e3,
            tps=output_tokens / total if output_tokens and total > 0 else None,
            input_tokens=usage.get("prompt_tokens"), output_tokens=output_tokens,
            finish_reason={"length": "length", "stop": "stop"}.get(finish or "", finish),
            model=model, response_id=response_id, request_id=request.request_id,
            attributes={gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: ttft_ms / 1e3} if ttft_ms is not None else {},
        )

    def shutdown(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        if self._http is not None:
            self._http.close()
            self._http = None
