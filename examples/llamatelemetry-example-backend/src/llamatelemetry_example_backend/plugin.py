"""The plugin: one hook registering the backend; the backend module is imported only when used."""

from __future__ import annotations

from llamatelemetry.plugins import BackendSpec, hookimpl


@hookimpl
def llamatelemetry_register_backends() -> list[BackendSpec]:
    """Register ``openai-compatible`` (alias ``example``) for ``create_engine`` and ``llamatelemetry bench``."""
    return [BackendSpec(
        name="openai-compatible",
        aliases=("example",),
        factory="llamatelemetry_example_backend.backend:OpenAICompatibleBackend",
        provider_name="openai_compatible",
        span_kind="client",
        description="any server speaking OpenAI's /v1/chat/completions",
    )]
