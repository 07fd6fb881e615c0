"""Under CI=true a skip is a failure unless the test is marked ``gpu`` or ``may_skip`` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CASES = '''
import pytest

def test_passes():
    pass

def test_component_missing():
    pytest.skip("rotel not installed")

@pytest.mark.may_skip("only runs on a machine without a GPU")
def test_legitimately_skipped():
    pytest.skip("this machine has a GPU")

@pytest.mark.gpu
def test_on_a_gpu():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs an NVIDIA GPU\n")
    pytester.makepyfile(test_cases=CASES)
    return pytester


def test_skips_fail_under_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("passed") == 1 and outcomes.get("xfailed") == 1, \
        result.outlines
    text = "\n".join(result.outlines)
    assert "FAILED test_cases.py::test_component_missing" in text and "rotel not installed" in text
    assert "Under CI=true a skip fails the run" in text
    # Marked skips stay skips: may_skip always, gpu where no GPU is found.
    assert "SKIPPED" in text and "test_legitimately_skipped" not in " ".join(
        line for line in result.outlines if line.startswith("FAILED"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_module_skipped_at_import_fails_under_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    suite.makepyfile(test_import_skip="import pytest\npytest.importorskip('no_such_module_x')\n")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "test_import_skip.py")
    assert result.parseoutcomes().get("errors") == 1, result.outlines
    assert "no_such_module_x" in "\n".join(result.outlines)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error: pytest stops before running


def test_skips_stay_skips_outside_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes and "errors" not in outcomes and outcomes.get("skipped", 0) >= 3
    assert result.ret == pytest.ExitCode.OK


def test_nothing_collected_is_still_exit_code_5(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The noxfile treats exit code 5 (a -k filter that matches nothing) as success; CI=true keeps it."""
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "test_cases.py", "-k", "no_test_has_this_name")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_skip_in_a_fixture_or_a_skipif_fails_under_ci(suite: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's usual pattern (a fixture that skips when rotel or a model is missing) is caught too."""
    monkeypatch.setenv("CI", "true")
    suite.makepyfile(test_fixture_skip='''
import pytest

@pytest.fixture
def collector():
    pytest.skip("rotel not installed (pip install rotel)")

def test_needs_collector(collector):
    pass

@pytest.mark.skipif(True, reason="xllamacpp missing")
def test_skipif():
    pass
''')
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "test_fixture_skip.py")
    outcomes = result.parseoutcomes()
    assert "skipped" not in outcomes, result.outlines
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 2, result.outlines
    text = "\n".join(result.outlines)
    assert "rotel not installed" in text and "xllamacpp missing" in text
    assert result.ret == pytest.ExitCode.TESTS_FAILED
