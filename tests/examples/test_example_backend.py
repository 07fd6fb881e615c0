"""The example third-party backend, installed as users install plugins, against a real llama.cpp server."""

from __future__ import annotations

from typing import Any

import pytest

from llamatelemetry.inference import InferenceRequest, SamplingParams, create_engine
from llamatelemetry.plugins import get_plugin_manager
from llamatelemetry.testing import BackendConformance, InMemoryTelemetry

example = pytest.importorskip("llamatelemetry_example_backend",
                              reason="pip install -e examples/llamatelemetry-example-backend")


def test_the_installed_entry_point_registers_the_backend() -> None:
    infos = {info.name: info for info in get_plugin_manager().plugin_infos()}
    assert infos["openai-compatible"].distribution == "llamatelemetry-example-backend"
    assert infos["openai-compatible"].provides["backends"] == ("openai-compatible",)


def test_create_engine_finds_it_and_spans_carry_its_figures(llama_server: Any) -> None:
    with InMemoryTelemetry() as telemetry, \
            create_engine("openai-compatible", base_url=llama_server.base_url) as engine:
        result = engine.generate(InferenceRequest(messages=[{"role": "user", "content": "Name a colour."}],
                                                  max_tokens=6, sampling=SamplingParams(temperature=0.0)))
        span = telemetry.spans()[0]
    assert result.output_tokens == 6 and result.finish_reason == "length"
    assert result.ttft_ms is not None and 0 < result.ttft_ms <= (result.total_ms or 0)
    assert span.kind.name == "CLIENT"
    assert span.attributes["gen_ai.provider.name"] == "openai_compatible"
    assert span.attributes["gen_ai.usage.output_tokens"] == 6
    assert span.attributes["gen_ai.response.time_to_first_chunk"] == pytest.approx(result.ttft_ms / 1e3)


def test_an_absent_server_is_a_clear_start_error() -> None:
    from llamatelemetry.errors import BackendStartError, ServerUnavailableError

    engine = create_engine("openai-compatible", base_url="http://127.0.0.1:9")
    with pytest.raises(BackendStartError, match=r"No OpenAI-compatible server answered at http://127\.0\.0\.1:9") \
            as raised:
        engine.start()
    assert isinstance(raised.value.__cause__, ServerUnavailableError), "the core class every server backend raises"


class TestConformance(BackendConformance):
    """The example passes the suite every backend owes its users."""

    @pytest.fixture
    def backend(self, llama_server: Any) -> Any:
        return example.OpenAICompatibleBackend(llama_server.base_url)

    @pytest.mark.may_skip("opt-in check: the example, like a new plugin, defines no context_window fixture")
    def test_context_overflow_is_the_core_error(self, started: Any, context_window: int | None,
                                                conformance_messages: list[dict[str, Any]]) -> None:
        super().test_context_overflow_is_the_core_error(started, context_window, conformance_messages)
