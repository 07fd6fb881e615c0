"""The backend conformance suite passes a backend that keeps the contract and fails one that does not."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BACKENDS = '''
import pytest
from llamatelemetry.errors import ContextOverflowError
from llamatelemetry.inference import InferenceResult
from llamatelemetry.testing import BackendConformance

WINDOW = 32


class Honest:
    provider_name = "honest"

    def start(self):
        self.running = True

    def generate(self, request):
        words = request.prompt_text.split()
        if len(words) >= WINDOW:
            raise ContextOverflowError(prompt_tokens=len(words), n_ctx=WINDOW)
        out = words[: request.max_tokens]
        return InferenceResult(text=" ".join(out), input_tokens=len(words), output_tokens=len(out),
                               ttft_ms=0.5, total_ms=1.0, finish_reason="length" if len(out) == request.max_tokens
                               else "stop", request_id=request.request_id)

    def shutdown(self):
        self.running = False


class Sloppy(Honest):
    """Ignores max_tokens and the context window, reports a negative TTFT, an unknown finish reason, no request_id."""

    def generate(self, request):
        return InferenceResult(text="x " * 50, input_tokens=3, output_tokens=50, ttft_ms=-1.0,
                               finish_reason="eos")


class TestHonest(BackendConformance):
    @pytest.fixture
    def backend(self):
        return Honest()

    @pytest.fixture
    def context_window(self):
        return WINDOW


class TestSloppy(BackendConformance):
    @pytest.fixture
    def backend(self):
        return Sloppy()

    @pytest.fixture
    def context_window(self):
        return WINDOW


class TestWindowUnknown(BackendConformance):
    @pytest.fixture
    def backend(self):
        return Honest()
'''


def test_suite_separates_a_conforming_backend_from_a_sloppy_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_backends=BACKENDS)
    result = pytester.runpytest_subprocess("-q", "-rA", "-p", "no:cacheprovider")
    passed = [line for line in result.outlines if line.startswith("PASSED")]
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    assert passed and all(line.split("::")[1] in ("TestHonest", "TestSloppy", "TestWindowUnknown")
                          for line in passed + failed)
    assert not [line for line in failed if "TestHonest" in line or "TestWindowUnknown" in line], \
        "\n".join(result.outlines)
    assert [line for line in passed if "TestHonest::test_context_overflow_is_the_core_error" in line]
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "context_window" in skipped[0], "\n".join(result.outlines)
    sloppy_failures = {line.split("::")[-1].split()[0] for line in failed if "TestSloppy" in line}
    assert sloppy_failures == {
        "test_token_counts_are_exact_and_bounded",
        "test_figures_are_honest",
        "test_finish_reason_uses_semconv_values",
        "test_request_id_round_trips",
        "test_context_overflow_is_the_core_error",
    }, "\n".join(result.outlines)


def test_plugin_author_fixtures_are_registered_by_the_pytest_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixtures='''
        import llamatelemetry
        from llamatelemetry.plugins import get_plugin_manager, hookimpl

        def test_in_memory_telemetry(llamatelemetry_telemetry):
            with llamatelemetry.span("checked"):
                pass
            assert [s.name for s in llamatelemetry_telemetry.spans()] == ["checked"]

        def test_fresh_manager(llamatelemetry_plugin_manager):
            class P:
                @hookimpl
                def llamatelemetry_resource_attributes(self):
                    return {"a": 1}
            llamatelemetry_plugin_manager.register(P())
            assert get_plugin_manager() is llamatelemetry_plugin_manager
            assert llamatelemetry_plugin_manager.backends() == {}
        ''')
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
