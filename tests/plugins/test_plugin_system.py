"""The plugin system against installed (fake) distributions: loading, isolation, env switches, registries."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest

import llamatelemetry
from llamatelemetry.errors import BackendNotFoundError, BackendStartError, PluginNotInstalledError
from llamatelemetry.inference import InferenceRequest, InferenceResult, create_engine
from llamatelemetry.plugins import BackendSpec, PluginManager, hookimpl, register_plugin, unregister_plugin
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

GOOD_PLUGIN = """
from llamatelemetry.plugins import BackendSpec, PresetSpec, hookimpl

LOADS = []

@hookimpl
def llamatelemetry_register_backends():
    LOADS.append(1)
    return [BackendSpec(name="good-echo", factory="good_backend:EchoBackend", aliases=["goodecho"],
                        provider_name="good")]

@hookimpl
def llamatelemetry_register_presets():
    return [PresetSpec(name="good-preset", values={"gpu_layers": 1})]

@hookimpl
def llamatelemetry_request_start(span, request):
    span.set_attribute("good.saw_request", request.request_id)
"""

GOOD_BACKEND = """
from llamatelemetry.inference import InferenceResult

class EchoBackend:
    provider_name = "good"
    model_name = "echo-model"

    def __init__(self, **options):
        self.options = options
        self.running = False

    def start(self):
        self.running = True

    def generate(self, request):
        words = request.prompt_text.split()[: request.max_tokens]
        return InferenceResult(text=" ".join(words), input_tokens=len(request.prompt_text.split()),
                               output_tokens=len(words), finish_reason="stop", request_id=request.request_id)

    def shutdown(self):
        self.running = False
"""

BROKEN_IMPORT = """
raise RuntimeError("this plugin is broken on purpose")
"""

RAISING_PLUGIN = """
from llamatelemetry.plugins import hookimpl

CALLS = []

@hookimpl
def llamatelemetry_request_start(span, request):
    CALLS.append(request.request_id)
    raise ValueError("enricher bug")
"""


def _install_standard(fake_dists: Any) -> None:
    fake_dists.add("good-plugin", "1.4.2", {"good_plugin": GOOD_PLUGIN, "good_backend": GOOD_BACKEND},
                   {"good": "good_plugin"})
    fake_dists.add("broken-plugin", "0.0.1", {"broken_plugin": BROKEN_IMPORT}, {"broken": "broken_plugin"})
    fake_dists.add("raising-plugin", "2.0.0", {"raising_plugin": RAISING_PLUGIN}, {"raising": "raising_plugin"})


def _request(text: str = "one two three four") -> InferenceRequest:
    return InferenceRequest(messages=[{"role": "user", "content": text}], max_tokens=3)


def test_installed_plugin_is_loaded_with_its_distribution(fake_dists: Any) -> None:
    _install_standard(fake_dists)
    with fresh_plugin_manager(load_entry_points=True) as pm:
        infos = {info.name: info for info in pm.plugin_infos()}
        assert infos["good"].distribution == "good-plugin"
        assert infos["good"].version == "1.4.2"
        assert infos["good"].status == "loaded"
        assert infos["good"].provides["backends"] == ("good-echo",)
        assert "good-echo" in pm.backends() and "goodecho" in pm.backends()
        assert pm.backends()["good-echo"].distribution == "good-plugin"
        assert "good-preset" in pm.presets()


def test_broken_plugin_is_logged_and_skipped(fake_dists: Any, caplog: pytest.LogCaptureFixture) -> None:
    _install_standard(fake_dists)
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.plugins"), \
            fresh_plugin_manager(load_entry_points=True) as pm:
        infos = {info.name: info for info in pm.plugin_infos()}
    assert infos["broken"].status == "failed"
    assert "broken on purpose" in (infos["broken"].error or "")
    assert infos["good"].status == "loaded", "one broken plugin must not stop the others"
    messages = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert messages and "broken-plugin" in messages[0] and "0.0.1" in messages[0]


def test_raising_hook_is_logged_once_and_other_plugins_still_run(fake_dists: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    _install_standard(fake_dists)
    with fresh_plugin_manager(load_entry_points=True), InMemoryTelemetry() as telemetry, \
            caplog.at_level(logging.DEBUG, logger="llamatelemetry.plugins"):
        with create_engine("good-echo") as engine:
            first = engine.generate(_request())
            second = engine.generate(_request())
        assert first.text == "one two three" and second.text == "one two three"
        spans = telemetry.spans()
        assert [s.attributes["good.saw_request"] for s in spans] == [first.request_id, second.request_id]
    raising = sys.modules["raising_plugin"]
    assert [first.request_id, second.request_id] == raising.CALLS
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "raising" in r.getMessage()]
    assert len(warnings) == 1, "the first failure is a warning, later ones debug"
    assert "raising-plugin 2.0.0" in warnings[0].getMessage()
    assert "llamatelemetry_request_start" in warnings[0].getMessage()


def test_plugins_load_once_and_lazily(fake_dists: Any) -> None:
    _install_standard(fake_dists)
    with fresh_plugin_manager(load_entry_points=True) as pm:
        assert "good_plugin" not in sys.modules or not sys.modules["good_plugin"].LOADS
        pm.backends()
        pm.backends()
        pm.ensure_loaded()
        assert sys.modules["good_plugin"].LOADS == [1], "registration hooks run once per manager"


def test_import_llamatelemetry_loads_no_plugin_but_init_does(fake_dists: Any, run_python: Any) -> None:
    _install_standard(fake_dists)
    result = run_python(
        """
        import sys, llamatelemetry
        before = "good_plugin" in sys.modules
        llamatelemetry.init(service_name="t", traces_exporter="none", metrics_exporter="none")
        after = "good_plugin" in sys.modules
        llamatelemetry.shutdown()
        print(before, after)
        """,
        env=fake_dists.env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LLAMATELEMETRY_DISABLE_PLUGINS", "good-plugin", {"good": "blocked"}),
        ("LLAMATELEMETRY_DISABLE_PLUGINS", "good", {"good": "blocked"}),
        ("LLAMATELEMETRY_PLUGINS", "raising", {"good": "not allowed", "raising": "loaded"}),
        ("LLAMATELEMETRY_PLUGINS", "", {"good": "not allowed", "raising": "not allowed"}),
    ],
)
def test_allow_and_block_lists(fake_dists: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                               expected: dict[str, str]) -> None:
    _install_standard(fake_dists)
    monkeypatch.setenv(variable, value)
    with fresh_plugin_manager(load_entry_points=True) as pm:
        statuses = {info.name: info.status for info in pm.plugin_infos()}
        for name, status in expected.items():
            assert statuses[name] == status
        if expected.get("good") != "loaded":
            assert "good-echo" not in pm.backends()


def test_trace_plugins_writes_hook_calls_to_stderr(fake_dists: Any, run_python: Any) -> None:
    _install_standard(fake_dists)
    env = fake_dists.env()
    env["LLAMATELEMETRY_TRACE_PLUGINS"] = "1"
    result = run_python("from llamatelemetry.plugins import get_plugin_manager; get_plugin_manager().backends()",
                        env=env)
    assert result.returncode == 0, result.stderr
    assert "llamatelemetry_register_backends" in result.stderr


def test_backend_name_conflict_names_both_distributions(fake_dists: Any) -> None:
    _install_standard(fake_dists)
    fake_dists.add("other-plugin", "3.1.0", {"other_plugin": GOOD_PLUGIN.replace("LOADS = []", "LOADS = []  # twin")},
                   {"other": "other_plugin"})
    with fresh_plugin_manager(load_entry_points=True) as pm:
        conflicts = pm.conflicts()
        assert pm.backends()["good-echo"].distribution == "good-plugin", "the first loaded keeps the name"
    assert any("good-plugin" in c and "other-plugin" in c and "good-echo" in c for c in conflicts)


def test_register_plugin_and_init_plugins_without_packaging(fake_dists: Any) -> None:
    fake_dists.add("good-backend-only", "1.0", {"good_backend": GOOD_BACKEND}, {})
    seen: list[str] = []

    class Tenant:
        @hookimpl
        def llamatelemetry_request_start(self, span: Any, request: InferenceRequest) -> None:
            seen.append(request.request_id)
            span.set_attribute("app.tenant", "acme")

    class Backends:
        @hookimpl
        def llamatelemetry_register_backends(self) -> list[BackendSpec]:
            return [BackendSpec(name="inline", factory="good_backend:EchoBackend")]

    with fresh_plugin_manager() as pm:
        backends = Backends()
        register_plugin(backends)
        tenant = Tenant()
        with InMemoryTelemetry(plugins=[tenant]) as telemetry, create_engine("inline") as engine:
            result = engine.generate(_request())
            assert telemetry.spans()[0].attributes["app.tenant"] == "acme"
        assert seen == [result.request_id]
        # init(plugins=...) registered the tenant for that telemetry only: shutdown() unregistered it.
        assert not pm.is_registered(tenant)
        assert pm.is_registered(backends)
        unregister_plugin(backends)
        assert not pm.is_registered(backends)


def test_register_refuses_a_second_plugin_under_the_same_name() -> None:
    class A:
        pass

    with fresh_plugin_manager() as pm:
        pm.register(A(), name="dup")
        with pytest.raises(ValueError, match="already registered"):
            pm.register(A(), name="dup")


def test_unknown_backend_lists_installed_and_install_command(fake_dists: Any) -> None:
    _install_standard(fake_dists)
    with fresh_plugin_manager(load_entry_points=True):
        # A first-party backend whose plugin registers none yet (the transformers plugin now registers its own).
        with pytest.raises(BackendNotFoundError) as caught:
            create_engine("unsloth")
        message = str(caught.value)
        assert "good-echo" in message
        assert "llamatelemetry-core[unsloth]" in message or "llamatelemetry-unsloth" in message
        with pytest.raises(BackendNotFoundError, match=r"no-such-engine.*good-echo"):
            create_engine("no-such-engine")


def test_backend_that_cannot_be_created_or_started_raises_clearly(fake_dists: Any) -> None:
    fake_dists.add("bad-backends", "1.0", {
        "bad_backends": """
            from llamatelemetry.plugins import BackendSpec, hookimpl

            @hookimpl
            def llamatelemetry_register_backends():
                return [BackendSpec(name="missing-module", factory="no_such_module_xyz:Backend"),
                        BackendSpec(name="fails-start", factory="bad_backends:FailsStart")]

            class FailsStart:
                shut = []
                def start(self):
                    raise OSError("model file not found: /nope.gguf")
                def generate(self, request):
                    raise AssertionError("never called")
                def shutdown(self):
                    FailsStart.shut.append(True)
            """}, {"bad": "bad_backends"})
    with fresh_plugin_manager(load_entry_points=True):
        with pytest.raises(BackendStartError, match=r"missing-module.*bad-backends.*could not be imported"):
            create_engine("missing-module")
        engine = create_engine("fails-start")
        with pytest.raises(BackendStartError, match=r"fails-start.*OSError: model file not found") as caught:
            engine.start()
        assert isinstance(caught.value.__cause__, OSError)
        assert sys.modules["bad_backends"].FailsStart.shut == [True], "a failed start leaves nothing running"
        with pytest.raises(BackendStartError, match=r"does not accept these options \(model_path\)"):
            create_engine("fails-start", model_path="/nope.gguf")


def test_plugins_cli_lists_versions_and_registrations(fake_dists: Any) -> None:
    _install_standard(fake_dists)
    command = [sys.executable, "-m", "llamatelemetry", "plugins", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=fake_dists.env(), timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["good"]["version"] == "1.4.2"
    assert by_name["good"]["provides"]["backends"] == ["good-echo"]
    assert by_name["broken"]["status"] == "failed"
    assert by_name["llamacpp"]["distribution"] == "llamatelemetry-llamacpp"
    table = subprocess.run(command[:-1], capture_output=True, text=True, env=fake_dists.env(), timeout=120)
    assert table.returncode == 0
    assert "good-plugin" in table.stdout and "1.4.2" in table.stdout and "good-echo" in table.stdout


@pytest.mark.parametrize(("module", "extra"), [("llama", "llamacpp"), ("nccl", "nccl"), ("unsloth", "unsloth"),
                                               ("kaggle", "kaggle")])
def test_plugin_import_paths_without_the_plugin_give_the_install_command(run_python: Any, module: str,
                                                                         extra: str) -> None:
    # sys.modules[name] = None is how Python itself marks a module as not importable.
    result = run_python(f"""
        import sys
        sys.modules["llamatelemetry_{extra}"] = None
        try:
            import llamatelemetry.{module}
        except ImportError as exc:
            print(type(exc).__name__, "|", exc)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PluginNotInstalledError |")
    assert f'pip install "llamatelemetry-core[{extra}]"' in result.stdout


def test_plugin_import_paths_with_the_plugin_installed_resolve_to_it() -> None:
    import llamatelemetry.llama as llama
    import llamatelemetry_llamacpp

    assert llama is llamatelemetry_llamacpp
    assert "single_gpu" in llama.PRESETS
    # The Kaggle presets moved to the Kaggle plugin, which registers them.
    from llamatelemetry.plugins import get_plugin_manager

    assert get_plugin_manager().presets()["kaggle_t4_dual"].distribution == "llamatelemetry-kaggle"


def test_backends_module_names_the_missing_plugin(run_python: Any) -> None:
    result = run_python("""
        import sys
        sys.modules["llamatelemetry_transformers"] = None
        try:
            from llamatelemetry.backends import TransformersBackend
        except ImportError as exc:
            print(exc)
        """)
    assert 'pip install "llamatelemetry-core[transformers]"' in result.stdout, result.stderr


@pytest.mark.parametrize(("name", "module", "extra"), [
    ("instrument_transformers", "llamatelemetry_transformers", "transformers"),
    ("instrument_llamacpp", "llamatelemetry_llamacpp", "llamacpp"),
])
def test_sdk_instrument_helpers_without_plugin_give_install_command(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                    module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(PluginNotInstalledError, match=rf'pip install "llamatelemetry-core\[{extra}\]"'):
        from llamatelemetry import sdk

        getattr(sdk, name)


def test_sdk_instrument_by_name_without_plugin_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry.sdk import instrument

    monkeypatch.setitem(sys.modules, "llamatelemetry_transformers", None)
    with fresh_plugin_manager(), pytest.raises(PluginNotInstalledError, match=r"llamatelemetry-core\[transformers\]"):
        instrument("transformers", object())


def test_sdk_instrument_by_name_with_plugin_installed_but_not_loaded_says_upgrade() -> None:
    from llamatelemetry.sdk import instrument

    upgrade = r'pip install --upgrade "llamatelemetry-transformers"'
    with fresh_plugin_manager(), pytest.raises(LookupError, match=upgrade):
        instrument("transformers", object())


def test_sdk_and_backends_helpers_are_the_plugins_own() -> None:
    import llamatelemetry_llamacpp
    import llamatelemetry_transformers
    from llamatelemetry import backends, sdk

    assert sdk.instrument_llamacpp is llamatelemetry_llamacpp.instrument_llamacpp
    assert sdk.instrument_transformers is llamatelemetry_transformers.instrument_transformers
    assert backends.LlamaCppBackend is llamatelemetry_llamacpp.LlamaCppBackend
    assert backends.TransformersBackend is llamatelemetry_transformers.TransformersBackend
    assert {"instrument_llamacpp", "instrument_transformers"} <= set(dir(sdk))
    assert {"LlamaCppBackend", "TransformersBackend", "LLMBackend"} <= set(dir(backends))
    with pytest.raises(AttributeError, match="NoSuchBackend"):
        backends.NoSuchBackend  # noqa: B018


def test_fresh_manager_isolation_helper() -> None:
    with fresh_plugin_manager() as pm:
        assert isinstance(pm, PluginManager)
        assert llamatelemetry.plugins.get_plugin_manager() is pm
        assert pm.backends() == {}
    assert llamatelemetry.plugins.get_plugin_manager() is not pm


def test_engine_result_type_is_checked() -> None:
    class Wrong:
        def start(self) -> None: ...
        def shutdown(self) -> None: ...
        def generate(self, request: InferenceRequest) -> Any:
            return {"text": "not a result"}

    from llamatelemetry.inference import InferenceEngine

    with InMemoryTelemetry() as telemetry, InferenceEngine(Wrong()) as engine:
        with pytest.raises(TypeError, match="not an InferenceResult"):
            engine.generate(_request())
        assert telemetry.spans()[0].status.status_code.name == "ERROR"
    assert isinstance(InferenceResult(text=""), InferenceResult)


def test_instrumentors_registered_by_a_plugin_drive_sdk_instrument() -> None:
    from llamatelemetry.plugins import InstrumentorSpec
    from llamatelemetry.sdk import available_instrumentors, instrument, uninstrument

    class Target:
        patched = False

    class Instrumentors:
        @hookimpl
        def llamatelemetry_register_instrumentors(self) -> list[InstrumentorSpec]:
            return [InstrumentorSpec(name="target", factory=f"{__name__}:_patch",
                                     uninstrument=f"{__name__}:_unpatch")]

    target = Target()
    with fresh_plugin_manager(Instrumentors()):
        assert available_instrumentors() == ["target"]
        assert instrument("target", target) is target and target.patched
        uninstrument("target", target)
        assert not target.patched
        with pytest.raises(LookupError, match=r"No instrumentor named 'nope'.*target"):
            instrument("nope", target)


def _patch(target: Any) -> Any:
    target.patched = True
    return target


def _unpatch(target: Any) -> None:
    target.patched = False


def test_commands_registered_by_a_plugin_join_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from llamatelemetry.cli import main

    class Hello:
        @hookimpl
        def llamatelemetry_register_commands(self, subparsers: Any) -> None:
            parser = subparsers.add_parser("hello", help="say hello")
            parser.add_argument("--name", default="world")
            parser.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)

    with fresh_plugin_manager(Hello()):
        assert main(["hello", "--name", "llama"]) == 0
        assert main([]) == 2, "no command: help and a usage exit status"
    assert "hello llama" in capsys.readouterr().out


def test_stages_registered_by_a_plugin_are_found_by_kind_and_name() -> None:
    from llamatelemetry.plugins import StageSpec

    class Stages:
        @hookimpl
        def llamatelemetry_register_stages(self) -> list[StageSpec]:
            return [StageSpec(name="upper", kind="export", factory=f"{__name__}:_upper")]

    with fresh_plugin_manager(Stages()) as pm:
        stage = pm.stages()["export:upper"]
        assert stage.load()("gguf") == "GGUF"
        infos = {info.name: info for info in pm.plugin_infos()}
        assert any(info.provides.get("stages") == ("upper",) for info in infos.values())


def _upper(text: str) -> str:
    return text.upper()


# ---------------------------------------------------------------- unknown hooks (pluggy's check_pending)

MISSPELLED_PLUGIN = """
from llamatelemetry.plugins import BackendSpec, hookimpl

@hookimpl
def llamatelemetry_register_backends():
    return [BackendSpec(name="misspelled-echo", factory="good_backend:EchoBackend")]

@hookimpl
def llamatelemetry_request_begin(span, request):
    span.set_attribute("misspelled.ran", True)
"""


def test_installed_plugin_with_an_unknown_hook_is_skipped_and_reported(fake_dists: Any,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    _install_standard(fake_dists)
    fake_dists.add("misspelled-plugin", "0.3.0", {"misspelled_plugin": MISSPELLED_PLUGIN},
                   {"misspelled": "misspelled_plugin"})
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.plugins"), \
            fresh_plugin_manager(load_entry_points=True) as pm:
        infos = {info.name: info for info in pm.plugin_infos()}
        assert infos["misspelled"].status == "failed"
        error = infos["misspelled"].error or ""
        assert "llamatelemetry_request_begin" in error and "misspelled-plugin 0.3.0" in error
        assert "misspelled-echo" not in pm.backends(), "the whole plugin is skipped, not just the unknown hook"
        assert infos["good"].status == "loaded" and "good-echo" in pm.backends(), "the other plugins run"
        pm.pluggy_manager.check_pending()  # nothing unknown is left registered
    warnings = [r.getMessage() for r in caplog.records if "misspelled" in r.getMessage()]
    assert warnings and "llamatelemetry_request_begin" in warnings[0] and "misspelled-plugin" in warnings[0]


def test_plugins_cli_lists_a_plugin_with_an_unknown_hook_as_failed(fake_dists: Any) -> None:
    fake_dists.add("misspelled-plugin", "0.3.0", {"misspelled_plugin": MISSPELLED_PLUGIN},
                   {"misspelled": "misspelled_plugin"})
    command = [sys.executable, "-m", "llamatelemetry", "plugins", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=fake_dists.env(), timeout=120)
    assert result.returncode == 0, result.stderr
    by_name = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert by_name["misspelled"]["status"] == "failed"
    assert "llamatelemetry_request_begin" in by_name["misspelled"]["error"]
    assert by_name["llamacpp"]["status"] == "loaded"


class _Misspelled:
    @hookimpl
    def llamatelemetry_request_begin(self, span: Any, request: InferenceRequest) -> None:
        raise AssertionError("never called")


def test_register_plugin_with_an_unknown_hook_raises_and_registers_nothing() -> None:
    from llamatelemetry.plugins import PluginValidationError

    plugin = _Misspelled()
    with fresh_plugin_manager() as pm:
        with pytest.raises(PluginValidationError,
                           match=r"'misspelled'.*registered in code.*llamatelemetry_request_begin"):
            register_plugin(plugin, name="misspelled")
        assert not pm.is_registered(plugin)
        assert "misspelled" not in {info.name for info in pm.plugin_infos()}
        pm.pluggy_manager.check_pending()


def test_init_plugins_with_an_unknown_hook_raises() -> None:
    from llamatelemetry.plugins import PluginValidationError

    with fresh_plugin_manager(), pytest.raises(PluginValidationError, match="llamatelemetry_request_begin"), \
            InMemoryTelemetry(plugins=[_Misspelled()]):
        pass
    assert llamatelemetry.current() is None, "init() fails before any provider is set up"


def test_an_optional_hook_of_a_later_version_is_allowed() -> None:
    class Future:
        @hookimpl(optionalhook=True)
        def llamatelemetry_hook_of_a_later_version(self) -> None: ...

    with fresh_plugin_manager() as pm:
        register_plugin(Future())
        assert pm.is_registered(next(p for p in pm.pluggy_manager.get_plugins() if isinstance(p, Future)))


# ---------------------------------------------------------------- telemetry_start replay


class _StartRecorder:
    def __init__(self) -> None:
        self.starts: list[tuple[Any, Any, Any]] = []

    @hookimpl
    def llamatelemetry_telemetry_start(self, settings: Any, tracer_provider: Any, meter_provider: Any) -> None:
        self.starts.append((settings, tracer_provider, meter_provider))


def test_plugin_registered_after_init_receives_telemetry_start() -> None:
    late = _StartRecorder()
    with fresh_plugin_manager(), InMemoryTelemetry() as telemetry:
        register_plugin(late)
        live = telemetry.telemetry
        assert live is not None
        assert late.starts == [(live.settings, live.tracer_provider, live.meter_provider)]
    after = _StartRecorder()
    with fresh_plugin_manager():
        register_plugin(after)
    assert after.starts == [], "no telemetry running: nothing to replay"


def test_plugin_registered_before_init_receives_telemetry_start_once() -> None:
    early = _StartRecorder()
    with fresh_plugin_manager():
        register_plugin(early)
        assert early.starts == []
        with InMemoryTelemetry() as telemetry:
            assert len(early.starts) == 1
            assert early.starts[0][1] is telemetry.telemetry.tracer_provider  # type: ignore[union-attr]


def test_init_again_with_new_plugins_starts_them() -> None:
    second = _StartRecorder()
    with fresh_plugin_manager(), InMemoryTelemetry() as telemetry:
        assert llamatelemetry.init(plugins=[second]) is telemetry.telemetry, "the live telemetry is kept"
        assert [start[0] for start in second.starts] == [telemetry.telemetry.settings]  # type: ignore[union-attr]


def test_replayed_telemetry_start_that_raises_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Raises:
        @hookimpl
        def llamatelemetry_telemetry_start(self, settings: Any) -> None:
            raise RuntimeError("late plugin bug")

    with fresh_plugin_manager(), InMemoryTelemetry(), caplog.at_level(logging.WARNING, logger="llamatelemetry.plugins"):
        register_plugin(Raises(), name="late-raiser")
    assert any("late-raiser" in r.getMessage() and "llamatelemetry_telemetry_start" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------- a leaf manager, built-ins as import strings


def test_builtin_plugins_are_import_strings_loaded_like_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from llamatelemetry.gpu.plugin import PLUGIN_NAME
    from llamatelemetry.plugins import _manager

    assert all(isinstance(ep, metadata.EntryPoint) for ep in _manager.BUILTIN_PLUGINS)
    broken = metadata.EntryPoint("llamatelemetry.builtin.broken", "no_such_module_xyz", "llamatelemetry.builtin")
    monkeypatch.setattr(_manager, "BUILTIN_PLUGINS", (broken, *_manager.BUILTIN_PLUGINS))
    with fresh_plugin_manager() as pm:
        infos = {info.name: info for info in pm.plugin_infos()}
        assert infos["llamatelemetry.builtin.broken"].status == "failed"
        assert "no_such_module_xyz" in (infos["llamatelemetry.builtin.broken"].error or "")
        assert infos[PLUGIN_NAME].status == "builtin", "a failing built-in does not stop the others"
        assert infos["llamatelemetry.builtin.cli"].status == "builtin"
        assert infos[PLUGIN_NAME].distribution == "llamatelemetry-core"


def test_the_manager_imports_only_the_hookspecs_and_records() -> None:
    import ast
    from pathlib import Path

    from llamatelemetry.plugins import _manager

    tree = ast.parse(Path(_manager.__file__).read_text(encoding="utf-8"))
    type_checking = [node for node in ast.walk(tree) if isinstance(node, ast.If)
                     and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    typing_only = {id(child) for block in type_checking for child in ast.walk(block)}
    imported = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llamatelemetry"):
            imported.add(node.module if node.module != "llamatelemetry.plugins" else
                         f"llamatelemetry.plugins.{node.names[0].name}")
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("llamatelemetry")}
    # A leaf: not even the runtime (the replay keeps the arguments of the last telemetry_start itself).
    assert imported == {"llamatelemetry.plugins.hookspecs", "llamatelemetry.plugins.records"}


def test_importing_the_manager_loads_no_builtin_plugin(run_python: Any) -> None:
    result = run_python("""
        import sys
        from llamatelemetry.plugins import PluginManager
        pm = PluginManager(load_entry_points=False)
        print(sorted(m for m in sys.modules if m.split(".")[1:2] and m.split(".")[1] in {"cli", "gpu", "bench"}
                     and m.startswith("llamatelemetry.")))
        pm.ensure_loaded()
        print("llamatelemetry.cli.commands" in sys.modules, "llamatelemetry.gpu.plugin" in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "True True"]


# ---------------------------------------------------------------- what the core's extras provide


def test_the_core_extras_table_is_consistent_with_its_extras() -> None:
    from importlib import metadata

    from llamatelemetry.plugins.extras import provided_features

    core = metadata.metadata("llamatelemetry-core")
    extras = set(core.get_all("Provides-Extra") or [])
    features = provided_features()
    for alias in ("llamatelemetry.llama", "llamatelemetry.nccl", "llamatelemetry.unsloth", "llamatelemetry.kaggle",
                  "llamatelemetry.backends.LlamaCppBackend", "llamatelemetry.backends.TransformersBackend",
                  "llamatelemetry.sdk.instrument_llamacpp", "llamatelemetry.sdk.instrument_transformers"):
        assert alias in features, f"the API reference's {alias} must be declared"
    for feature in features.values():
        assert feature.extra in extras, feature
        assert feature.distribution is not None, f"extra {feature.extra!r} names no distribution in Requires-Dist"
        assert feature.distribution.replace("-", "_") == feature.module.split(".")[0], feature
        assert feature.install_command == f'pip install "llamatelemetry-core[{feature.extra}]"'


def test_every_declared_import_path_resolves_when_the_plugins_are_installed() -> None:
    import importlib

    from llamatelemetry.plugins.extras import load_feature, provided_features

    for key, feature in provided_features().items():
        if not key.startswith("llamatelemetry."):
            continue
        module_name, _, attribute = key.rpartition(".")
        if feature.attribute is None:
            assert importlib.import_module(key) is importlib.import_module(feature.module), key
        else:
            assert getattr(importlib.import_module(module_name), attribute) is load_feature(key), key


def test_a_plugin_too_old_for_a_declared_name_says_upgrade(fake_dists: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry.errors import PluginFeatureMissingError
    from llamatelemetry.plugins import extras

    fake_dists.add("llamatelemetry-old", "0.0.1", {"llamatelemetry_old": "OTHER = 1\n"}, {})
    old = extras.ProvidedFeature("llamatelemetry.backends.NewBackend", "llamatelemetry_old", "NewBackend", "old",
                                 "llamatelemetry-old")
    monkeypatch.setattr(extras, "provided_features", lambda: {old.key: old})
    with pytest.raises(PluginFeatureMissingError, match=r'llamatelemetry-old 0\.0\.1.*pip install --upgrade'):
        from llamatelemetry.backends import NewBackend  # noqa: F401


def test_create_engine_without_the_plugin_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llamatelemetry_llamacpp", None)
    with fresh_plugin_manager(), pytest.raises(BackendNotFoundError) as caught:
        create_engine("llama.cpp", llama_server_url="http://127.0.0.1:1")
    assert 'Install it with: pip install "llamatelemetry-core[llamacpp]"' in str(caught.value)
    hint = r'core\[transformers\]|llamatelemetry-transformers'
    with fresh_plugin_manager(), pytest.raises(BackendNotFoundError, match=hint):
        create_engine("HF")


def test_create_engine_forwards_llama_server_url_as_a_backend_option() -> None:
    class Backends:
        @hookimpl
        def llamatelemetry_register_backends(self) -> list[BackendSpec]:
            return [BackendSpec(name="options-echo", factory=f"{__name__}:_OptionsBackend")]

    with fresh_plugin_manager(Backends()):
        engine = create_engine("options-echo", "http://127.0.0.1:8090", temperature_default=0.5)
    assert engine.backend.options == {"llama_server_url": "http://127.0.0.1:8090", "temperature_default": 0.5}


class _OptionsBackend:
    def __init__(self, **options: Any) -> None:
        self.options = options

    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def generate(self, request: InferenceRequest) -> InferenceResult:
        return InferenceResult(text="")


def test_enable_nccl_without_the_plugin_warns_with_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "llamatelemetry_nccl", None)
    with fresh_plugin_manager(), caplog.at_level(logging.WARNING, logger="llamatelemetry"), \
            InMemoryTelemetry(enable_nccl=True):
        pass
    warnings = [r.getMessage() for r in caplog.records if "enable_nccl" in r.getMessage()]
    assert warnings == ['init(enable_nccl=True) needs the llamatelemetry-nccl plugin, which is not installed. '
                        'Install it with: pip install "llamatelemetry-core[nccl]"']


@pytest.mark.parametrize(("blocked", "warned"), [("", False), ("llamatelemetry-nccl", True)])
def test_enable_nccl_with_the_plugin_installed(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                              blocked: str, warned: bool) -> None:
    monkeypatch.setenv("LLAMATELEMETRY_DISABLE_PLUGINS", blocked)
    with fresh_plugin_manager(load_entry_points=True), caplog.at_level(logging.WARNING, logger="llamatelemetry"), \
            InMemoryTelemetry(enable_nccl=True):
        pass
    warnings = [r.getMessage() for r in caplog.records if "enable_nccl" in r.getMessage()]
    assert bool(warnings) == warned, warnings
    if warned:
        assert "llamatelemetry-nccl plugin is blocked" in warnings[0]


def test_the_core_code_names_no_plugin_distribution() -> None:
    """Install hints and import paths come from the core's metadata: no plugin name in the core's code.

    Docstrings may name plugins (they document them); string constants in code may not.
    """
    import ast
    import re
    from pathlib import Path

    packages = Path(__file__).resolve().parents[2] / "packages"
    plugins = [d.name for d in packages.glob("llamatelemetry-*") if d.name != "llamatelemetry-core"]
    assert {"llamatelemetry-llamacpp", "llamatelemetry-nccl"} <= set(plugins)
    extras = [name.removeprefix("llamatelemetry-") for name in plugins]
    names = sorted({*plugins, *(name.replace("-", "_") for name in plugins)})
    forbidden = re.compile("|".join(map(re.escape, names)) + r"|llamatelemetry-core\[(?:" + "|".join(extras) + ")")
    offenders = []
    for path in sorted((packages / "llamatelemetry-core" / "src" / "llamatelemetry").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        offenders += [f"{path.relative_to(packages)}:{node.lineno}: {node.value[:80]!r}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)
                      and id(node) not in docstrings and forbidden.search(node.value)]
    assert offenders == [], "the core names plugins in code; declare them in its llamatelemetry.extras entry points"
