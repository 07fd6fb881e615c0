"""The Kaggle plugin's registrations: presets through the registry, resource attributes, doctor, server library path."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from llamatelemetry.kaggle import auto_configure
from llamatelemetry.plugins import PluginManager, get_plugin_manager, set_plugin_manager
from llamatelemetry.testing.fake_nvml import FakeNVML


def test_the_kaggle_presets_come_from_the_kaggle_plugin_through_the_registry() -> None:
    import llamatelemetry_llamacpp
    from llamatelemetry_llamacpp.server import ServerManager, preset_values

    presets = get_plugin_manager().presets()
    for name in ("kaggle_t4_dual", "kaggle_t4_single", "kaggle_p100"):
        assert presets[name].distribution == "llamatelemetry-kaggle", name
        assert name not in llamatelemetry_llamacpp.PRESETS, "moved out of the llama.cpp plugin"
    config = ServerManager._resolve_config(None, "kaggle_t4_dual", None, None, None, None, None)
    assert (config.gpu_layers, config.tensor_split, config.n_gpus, config.flash_attn) == (99, "0.5,0.5", 2, True)
    assert preset_values("kaggle_p100")["flash_attn"] is False
    with pytest.raises(ValueError, match=r"Unknown preset 'h100x8': use one of cpu, kaggle_p100, kaggle_t4_dual, "
                                         r"kaggle_t4_single, single_gpu\.$"):
        preset_values("h100x8")


def test_without_the_kaggle_plugin_a_kaggle_preset_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry_llamacpp.server import preset_values

    monkeypatch.setenv("LLAMATELEMETRY_DISABLE_PLUGINS", "kaggle")
    set_plugin_manager(PluginManager())
    with pytest.raises(ValueError,
                       match=r"Unknown preset 'kaggle_t4_dual'.*pip install \"llamatelemetry-core\[kaggle\]\""):
        preset_values("kaggle_t4_dual")


def test_resource_attributes_only_on_kaggle_and_nothing_secret(monkeypatch: pytest.MonkeyPatch,
                                                               install_gpus: Callable[[str], FakeNVML]) -> None:
    from llamatelemetry.config import resolve_settings

    install_gpus("t4")
    settings = resolve_settings(environ={})
    assert "llamatelemetry.platform" not in get_plugin_manager().resource_attributes(settings)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "fake-secret-token")
    monkeypatch.setenv("KAGGLE_IAP_TOKEN", "fake-iap-token")
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "BIGQUERY:GCS")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_PROJECT", "kaggle-161607")
    attributes = get_plugin_manager().resource_attributes(settings)
    assert {k: v for k, v in attributes.items() if k.startswith("llamatelemetry.")} == {
        "llamatelemetry.platform": "kaggle", "llamatelemetry.kaggle.run_type": "batch",
        "llamatelemetry.kaggle.accelerator": "T4", "llamatelemetry.kaggle.gpu.count": 1,
        "llamatelemetry.kaggle.gpu.names": ["Tesla T4"], "llamatelemetry.kaggle.gpu.compute_capabilities": ["7.5"],
        "llamatelemetry.kaggle.integrations": ["BIGQUERY", "GCS"],
        "llamatelemetry.kaggle.data_proxy.project": "kaggle-161607",
    }
    assert "fake-secret-token" not in repr(attributes) and "fake-iap-token" not in repr(attributes)


def test_doctor_shows_the_kaggle_facts_on_kaggle(on_kaggle: None, kaggle_root: Path,
                                                 install_gpus: Callable[[str], FakeNVML],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from llamatelemetry.cli import main

    install_gpus("t4x2")
    auto_configure(root=kaggle_root, check_internet=False)
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "resource attributes from plugins" in text
    assert "llamatelemetry.platform = kaggle" in text and "llamatelemetry.kaggle.run_type = interactive" in text
    assert "llamatelemetry.kaggle.accelerator = T4 x2" in text and "Tesla T4, Tesla T4" in text
    assert "llamatelemetry.kaggle.gpu.compute_capabilities = 7.5, 7.5" in text
    assert "[0] Tesla T4, compute capability 7.5" in text and "[1] Tesla T4, compute capability 7.5" in text
    assert "fake-kernel-jwt" not in text
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resource_attributes"]["llamatelemetry.kaggle.gpu.count"] == 2
    assert report["resource_attributes"]["llamatelemetry.kaggle.gpu.compute_capabilities"] == ["7.5", "7.5"]
    assert [d["compute_capability"] for d in report["gpu"]["details"]] == ["7.5", "7.5"]


def test_doctor_off_kaggle_shows_no_kaggle_fact(capsys: pytest.CaptureFixture[str]) -> None:
    from llamatelemetry.cli import main

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not any(key.startswith("llamatelemetry.kaggle") for key in report["resource_attributes"])


@pytest.mark.parametrize("start", ["server_manager", "quick_start"])
def test_the_started_server_gets_the_library_path_and_the_notebook_keeps_its_environment(
        start: str, on_kaggle: None, monkeypatch: pytest.MonkeyPatch, kaggle_root: Path, tiny_gguf: Path,
        tmp_path: Path, install_gpus: Callable[[str], FakeNVML]) -> None:
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/already-there")
    install_gpus("none")
    cfg = auto_configure(root=kaggle_root, check_internet=False)
    assert cfg.library_path and all(path.startswith(str(kaggle_root)) for path in cfg.library_path)
    before = dict(os.environ)

    options = {"port": None, "threads": 1, "ctx_size": 256, "timeout_s": 60}
    if start == "server_manager":
        server = cfg.server_manager(log_dir=tmp_path)
        server.start_server(tiny_gguf, preset=cfg.preset, **options)
    else:
        server = cfg.quick_start(tiny_gguf, **options)
    with server:
        assert server.settings is not None and server.settings.config.gpu_layers == 0, "'cpu' from the registry"
        assert server.pid is not None
        raw = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        child = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    assert child["LD_LIBRARY_PATH"] == os.pathsep.join([*cfg.library_path, "/opt/already-there"])
    assert dict(os.environ) == before and os.environ["LD_LIBRARY_PATH"] == "/opt/already-there", \
        "the notebook's own environment is not changed"
