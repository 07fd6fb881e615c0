"""Meta-tests: the docs and the tests keep up with the code.

- every hook has a section in docs/plugins/hooks.md showing its current signature;
- every hook is exercised by at least one test;
- every name our semconv modules define, and every name a real workload emits, is in
  docs/reference/telemetry.md.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.plugins import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = (ROOT / "docs" / "plugins" / "hooks.md").read_text()
TELEMETRY_DOC = (ROOT / "docs" / "reference" / "telemetry.md").read_text()
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
               if name.startswith("llamatelemetry_"))
# Names whose suffix comes from the server at run time; the reference documents the pattern.
DYNAMIC_PREFIXES = ("llamatelemetry.llama_cpp.server.",)


def _signature(name: str) -> str:
    signature = str(inspect.signature(getattr(hookspecs, name))).replace("'", "")
    return f"{name}{signature}"


def _section(name: str) -> str:
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", HOOKS_DOC, re.S | re.M)
    return match.group(1) if match else ""


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_doc_section_with_its_current_signature(hook: str) -> None:
    section = _section(hook)
    assert section, f"docs/plugins/hooks.md has no '## {hook}' section"
    assert _signature(hook) in section, f"the section of {hook} must show: {_signature(hook)}"
    assert "**When:**" in section and "**Thread:**" in section and "@hookimpl" in section


def test_the_hooks_doc_has_no_stale_sections() -> None:
    documented = set(re.findall(r"^## (llamatelemetry_\w+)$", HOOKS_DOC, re.M))
    assert documented == set(HOOKS)


def _test_sources() -> Iterator[tuple[Path, str]]:
    for path in (ROOT / "tests").rglob("test_*.py"):
        if path.name != "test_meta.py":
            yield path, path.read_text()


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    using = [path.name for path, text in _test_sources() if hook in text]
    assert using, f"no test under tests/ uses {hook}"


def _semconv_modules() -> Iterator[Any]:
    import llamatelemetry.semconv as core

    for info in pkgutil.iter_modules(core.__path__):
        yield importlib.import_module(f"llamatelemetry.semconv.{info.name}")
    for plugin in ("llamatelemetry_llamacpp", "llamatelemetry_transformers", "llamatelemetry_nccl",
                   "llamatelemetry_unsloth", "llamatelemetry_kaggle"):
        try:
            yield importlib.import_module(f"{plugin}.semconv")
        except ModuleNotFoundError:
            continue


def _defined_names() -> set[str]:
    names: set[str] = set()
    for module in _semconv_modules():
        for key, value in vars(module).items():
            # Dotted identifiers only: attribute, metric, event and span names (not versions or URLs).
            if key.isupper() and isinstance(value, str) and "." in value \
                    and re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+", value):
                names.add(value)
    return names


def _documented(name: str) -> bool:
    if f"`{name}`" in TELEMETRY_DOC:
        return True
    return name.startswith(DYNAMIC_PREFIXES)


def test_every_defined_name_is_in_the_telemetry_reference() -> None:
    missing = sorted(name for name in _defined_names() if not _documented(name))
    assert not missing, f"add these to docs/reference/telemetry.md: {missing}"


def test_every_emitted_name_is_in_the_telemetry_reference(llama_server: Any, tiny_gguf: Path) -> None:
    from llamatelemetry.inference import InferenceEngine, InferenceRequest, SamplingParams, create_engine
    from llamatelemetry.testing import InMemoryTelemetry
    from llamatelemetry_llamacpp.client import LlamaCppClient
    from llamatelemetry_llamacpp.metrics_bridge import LlamaCppServerMetrics

    request = InferenceRequest(messages=[{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Say hi."}], max_tokens=3,
                               sampling=SamplingParams(temperature=0.0, seed=1, stop=["\n\n"]),
                               conversation_id="c-1")
    with InMemoryTelemetry(capture_content="SPAN_AND_EVENT") as telemetry:
        assert telemetry.telemetry is not None
        bridge = LlamaCppServerMetrics(llama_server.base_url, telemetry.telemetry.meter)
        with create_engine("llama.cpp", llama_server_url=llama_server.base_url) as engine:
            engine.generate(request)
        client = LlamaCppClient(llama_server.base_url)
        for _ in client.chat.create(messages=request.messages, max_tokens=3, stream=True):
            pass
        client.close()
        try:
            from llamatelemetry_llamacpp.backend import LlamaCppBackend

            with InferenceEngine(LlamaCppBackend(tiny_gguf, n_ctx=256, n_threads=1)) as local:
                local.generate(request)
        except ImportError:
            pass
        spans = telemetry.spans()
        metric_names = {point.name for point in telemetry.metric_points()}
        bridge.stop()
    attributes = {key for span in spans for key in (span.attributes or {})}
    attributes |= {key for span in spans for event in span.events for key in (event.attributes or {})
                   if event.name != "exception"}
    events = {event.name for span in spans for event in span.events if event.name != "exception"}
    static_spans = {span.name for span in spans if " " not in span.name}
    missing = sorted(name for name in attributes | metric_names | events | static_spans if not _documented(name))
    assert not missing, f"emitted but not in docs/reference/telemetry.md: {missing}"


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    sources = [p for d in ("packages", "examples") for p in (ROOT / d).rglob("*.py")]
    variables = {v for path in sources for v in re.findall(r"\"(LLAMATELEMETRY_[A-Z_]+)\"", path.read_text())}
    variables |= {v for path in sources for v in re.findall(r"\"(OTEL_[A-Z_]+)\"", path.read_text())}
    missing = sorted(v for v in variables if f"`{v}`" not in configuration)
    assert variables and not missing, f"add these to docs/configuration.md: {missing}"
