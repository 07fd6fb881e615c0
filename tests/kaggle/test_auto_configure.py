"""auto_configure() against a FAKE Kaggle (see conftest.py): detection, secrets, fallbacks, presets, export."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kaggle_fakes import FakeKaggleSecrets, everything_said

import llamatelemetry
from llamatelemetry.kaggle import auto_configure
from llamatelemetry.testing.fake_nvml import FakeNVML

CANARY = "canary-4f7d9e2b-do-not-leak"
KAGGLE_LOGGER = "llamatelemetry.kaggle"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == KAGGLE_LOGGER and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------ off Kaggle


def test_off_kaggle_it_says_so_and_changes_nothing(kaggle_root: Path, fake_kaggle_secrets: FakeKaggleSecrets,
                                                   install_gpus: Callable[[str], FakeNVML],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    fake = install_gpus("t4x2")
    fake_kaggle_secrets.set({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    before = dict(os.environ)
    caplog.set_level(logging.INFO)

    cfg = auto_configure(init=True, root=kaggle_root)

    assert cfg.on_kaggle is False and "KAGGLE_KERNEL_RUN_TYPE is not set" in cfg.reason
    assert (cfg.run_type, cfg.preset, cfg.telemetry, cfg.internet, cfg.library_path) == (None, None, None, None, ())
    assert cfg.init_kwargs() == {} and cfg.initialized is False
    assert llamatelemetry.current() is None, "off Kaggle, init=True starts nothing"
    assert dict(os.environ) == before
    assert fake_kaggle_secrets.calls == [] and fake.calls["nvmlInit"] == 0, "no secret asked, no GPU read"
    assert "not on Kaggle" in cfg.describe() and not _warnings(caplog)


# ------------------------------------------------------------------------------------------ on Kaggle


def test_kaggle_without_gpu_and_without_secrets_falls_back_to_a_file(
        on_kaggle: None, kaggle_root: Path, fake_kaggle_secrets: FakeKaggleSecrets,
        install_gpus: Callable[[str], FakeNVML], open_port: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    install_gpus("none")
    before = dict(os.environ)

    cfg = auto_configure(root=kaggle_root, internet_probe=open_port)

    assert cfg.on_kaggle and cfg.reason == "KAGGLE_KERNEL_RUN_TYPE=Interactive" and cfg.run_type == "interactive"
    assert cfg.accelerator.gpu_count == 0 and cfg.accelerator.label == "none"
    assert cfg.preset == "cpu" and cfg.flash_attention is False
    assert cfg.internet is True
    assert cfg.working_dir == kaggle_root / "kaggle" / "working" and cfg.input_dir == kaggle_root / "kaggle" / "input"
    plan = cfg.telemetry
    assert plan is not None and (plan.exporter, plan.source, plan.enable_gpu) == ("file", "fallback", False)
    assert plan.output_file == str(kaggle_root / "kaggle" / "working" / "llamatelemetry-telemetry.jsonl")
    assert cfg.init_kwargs() == {"service_name": "kaggle-notebook", "enable_gpu": False, "traces_exporter": "file",
                                 "metrics_exporter": "file", "output_file": plan.output_file}
    assert fake_kaggle_secrets.calls == ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "'OTEL_EXPORTER_OTLP_ENDPOINT' was not found" in warnings[0]
    assert cfg.warnings == (warnings[0],)
    assert dict(os.environ) == before


def test_batch_run_on_a_p100(on_kaggle: None, monkeypatch: pytest.MonkeyPatch, kaggle_root: Path,
                             install_gpus: Callable[[str], FakeNVML]) -> None:
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    install_gpus("p100")
    cfg = auto_configure(root=kaggle_root, check_internet=False)
    assert cfg.run_type == "batch" and cfg.internet is None
    (gpu,) = cfg.accelerator.gpus
    assert (gpu.name, gpu.memory_total_mib, gpu.power_limit_w) == ("Tesla P100-PCIE-16GB", 16384, 250.0)
    assert gpu.compute_capability == (6, 0), "from the product-name table: this fake NVML cannot say"
    assert (cfg.preset, cfg.flash_attention, cfg.accelerator.label) == ("kaggle_p100", False, "P100")


@pytest.mark.parametrize(("gpus", "preset", "label", "flash"), [
    ("t4x2", "kaggle_t4_dual", "T4 x2", True),
    ("t4", "kaggle_t4_single", "T4", True),
    ("p100", "kaggle_p100", "P100", False),
    ("none", "cpu", "none", False),
])
def test_the_preset_follows_the_gpus(on_kaggle: None, kaggle_root: Path, install_gpus: Callable[[str], FakeNVML],
                                     gpus: str, preset: str, label: str, flash: bool) -> None:
    install_gpus(gpus)
    cfg = auto_configure(root=kaggle_root, check_internet=False)
    assert (cfg.preset, cfg.accelerator.label, cfg.flash_attention) == (preset, label, flash)
    from llamatelemetry.plugins import get_plugin_manager

    registered = get_plugin_manager().presets()[preset]
    assert registered.values["flash_attn"] is flash, "the registered preset agrees with the record"


def test_two_t4s_read_through_the_gpu_module(on_kaggle: None, kaggle_root: Path,
                                             install_gpus: Callable[[str], FakeNVML]) -> None:
    fake = install_gpus("t4x2")
    cfg = auto_configure(root=kaggle_root, check_internet=False)
    assert [(g.index, g.name, g.memory_total_mib, g.power_limit_w, g.compute_capability)
            for g in cfg.accelerator.gpus] == [(0, "Tesla T4", 15360, 70.0, (7, 5)),
                                               (1, "Tesla T4", 15360, 70.0, (7, 5))]
    assert fake.calls["nvmlDeviceGetCudaComputeCapability"] == 2, "NVML's own answer, not the name table"
    assert fake.initialized == 0, "every nvmlInit is matched by an nvmlShutdown"
    assert cfg.telemetry is not None and cfg.telemetry.enable_gpu is True
    assert cfg.library_path == (str(kaggle_root / "usr/local/nvidia/lib64"), str(kaggle_root / "usr/local/cuda/lib64"))
    text = cfg.describe()
    assert "T4 x2" in text and "cc 7.5" in text and "kaggle_t4_dual" in text


def test_nvml_answers_the_compute_capability_and_the_name_table_only_fills_in(
        on_kaggle: None, kaggle_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU the table does not know gets NVML's answer; one NVML cannot say about gets the table's."""
    from kaggle_fakes import fake_p100

    from llamatelemetry.testing.fake_nvml import FakeDevice, FakeReading
    from llamatelemetry_kaggle.accelerator import compute_capability_from_name

    ada = FakeDevice("NVIDIA RTX 6000 Ada Generation", "GPU-ada-0000", 49140 * 1024 * 1024,
                     readings=[FakeReading(memory_used_bytes=0)], compute_capability=(8, 9))
    assert compute_capability_from_name(ada.name) is None, "only NVML knows this one"
    fake = FakeNVML([ada, fake_p100()])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    cfg = auto_configure(root=kaggle_root, check_internet=False)
    assert [g.compute_capability for g in cfg.accelerator.gpus] == [(8, 9), (6, 0)]
    assert cfg.accelerator.min_compute_capability == (6, 0) and cfg.flash_attention is False
    assert fake.calls["nvmlDeviceGetCudaComputeCapability"] == 2 and fake.initialized == 0


def test_the_secrets_labels_can_be_changed(on_kaggle: None, kaggle_root: Path, fake_kaggle_secrets: FakeKaggleSecrets,
                                           install_gpus: Callable[[str], FakeNVML], open_port: tuple[str, int]) -> None:
    install_gpus("t4")
    fake_kaggle_secrets.set({"COLLECTOR": "https://otlp.example.com:4318/v1/otlp?k=secretish", "AUTH": "x-key=abc"})
    cfg = auto_configure(root=kaggle_root, internet_probe=open_port, endpoint_secret="COLLECTOR",
                         headers_secret="AUTH", protocol="http/protobuf")
    assert fake_kaggle_secrets.calls == ["COLLECTOR", "AUTH"]
    plan = cfg.telemetry
    assert plan is not None and plan.exporter == "otlp" and plan.headers == {"x-key": "abc"}
    assert "endpoint=https://otlp.example.com:4318/..." in repr(plan) and "secretish" not in repr(cfg)
    assert cfg.init_kwargs()["protocol"] == "http/protobuf"


# ------------------------------------------------------------------------------------------ fallbacks


@pytest.mark.parametrize(("case", "expected"), [
    ("not_attached", "Kaggle's secrets service refused the notebook"),
    ("missing_endpoint", "the secret 'OTEL_EXPORTER_OTLP_ENDPOINT' was not found"),
    ("internet_off_probe", "internet is off"),
    ("internet_off_client", "internet is off"),
    ("invalid_endpoint", "is not an http(s):// URL"),
    ("bad_headers", "has an entry without 'key=value' form"),
])
def test_every_secrets_failure_gives_one_warning_and_a_working_file_export(
        case: str, expected: str, on_kaggle: None, monkeypatch: pytest.MonkeyPatch, kaggle_root: Path,
        fake_kaggle_secrets: FakeKaggleSecrets, install_gpus: Callable[[str], FakeNVML],
        open_port: tuple[str, int], closed_port: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    install_gpus("t4x2")
    probe = open_port
    secrets = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
               "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={CANARY}"}
    if case == "not_attached":
        monkeypatch.delenv("KAGGLE_USER_SECRETS_TOKEN")
    elif case == "missing_endpoint":
        secrets = {}
    elif case == "internet_off_probe":
        probe = closed_port
    elif case == "invalid_endpoint":
        secrets["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"collector-{CANARY}"
    elif case == "bad_headers":
        secrets["OTEL_EXPORTER_OTLP_HEADERS"] = f"{CANARY}"
    fake_kaggle_secrets.set(secrets, internet=case != "internet_off_client")

    cfg = auto_configure(init=True, root=kaggle_root, internet_probe=probe)

    warnings = _warnings(caplog)
    assert len(warnings) == 1 and expected in warnings[0], warnings
    assert cfg.telemetry is not None and cfg.telemetry.exporter == "file" and cfg.initialized
    if case == "internet_off_probe":
        assert cfg.internet is False and fake_kaggle_secrets.calls == [], "no 40 s wait on Kaggle's client"
    # The fallback really works: a span ends up in the working folder's file.
    from llamatelemetry.otel import get_tracer

    with get_tracer("tests.kaggle").start_as_current_span("kaggle fallback cell"):
        pass
    llamatelemetry.shutdown()
    output = Path(cfg.telemetry.output_file or "").read_text()
    assert "kaggle fallback cell" in output
    assert CANARY not in everything_said(caplog.text, repr(cfg), cfg.describe(), output, os.environ)


# ------------------------------------------------------------------------------------------ secrets to the collector


class HeaderRecordingOTLPProxy:
    """A tiny real OTLP/HTTP receiver that records each request's headers and forwards the body to rotel.

    rotel does not show the headers it received, so this stands in front of it: the exporter's
    headers are checked here, and the spans still cross the real collector to the sink.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, dict[str, str]]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                proxy.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                forward = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST",
                                                 headers={"Content-Type": self.headers.get("Content-Type", "")})
                with urllib.request.urlopen(forward, timeout=10) as answer:
                    status, payload = answer.status, answer.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HeaderRecordingOTLPProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxied_collector(otlp_collector: tuple[Any, Any]) -> Iterator[tuple[HeaderRecordingOTLPProxy, Any]]:
    collector, sink = otlp_collector
    with HeaderRecordingOTLPProxy(collector.http_endpoint) as proxy:
        yield proxy, sink


def test_t4x2_with_secrets_spans_reach_the_collector_with_the_header_and_the_secret_leaks_nowhere(
        on_kaggle: None, kaggle_root: Path, fake_kaggle_secrets: FakeKaggleSecrets,
        install_gpus: Callable[[str], FakeNVML], open_port: tuple[str, int],
        proxied_collector: tuple[HeaderRecordingOTLPProxy, Any], caplog: pytest.LogCaptureFixture) -> None:
    proxy, sink = proxied_collector
    install_gpus("t4x2")
    fake_kaggle_secrets.set({"OTEL_EXPORTER_OTLP_ENDPOINT": proxy.endpoint,
                             "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={CANARY},x-team=kaggle"})
    environ_before = dict(os.environ)
    caplog.set_level(logging.DEBUG)

    cfg = auto_configure(init=True, root=kaggle_root, internet_probe=open_port, protocol="http/protobuf",
                         service_name="kaggle-test")
    try:
        assert cfg.initialized and cfg.preset == "kaggle_t4_dual" and not cfg.warnings
        assert cfg.telemetry is not None and cfg.telemetry.exporter == "otlp" and cfg.telemetry.source == "secrets"
        assert "headers=<2 set>" in repr(cfg)
        from llamatelemetry.otel import get_tracer

        with get_tracer("tests.kaggle").start_as_current_span("kaggle notebook cell") as span:
            span.set_attribute("app.cell", 3)
    finally:
        llamatelemetry.shutdown()

    (received,) = sink.wait_for_spans(lambda s: s.name == "kaggle notebook cell")
    assert received.resource["service.name"] == "kaggle-test"
    assert received.resource["llamatelemetry.platform"] == "kaggle"
    assert received.resource["llamatelemetry.kaggle.run_type"] == "interactive"
    assert received.resource["llamatelemetry.kaggle.accelerator"] == "T4 x2"
    assert received.resource["llamatelemetry.kaggle.gpu.count"] == 2
    assert received.resource["llamatelemetry.kaggle.gpu.names"] == ["Tesla T4", "Tesla T4"]
    assert received.resource["llamatelemetry.kaggle.image.build_date"] == "20261115-093000"
    traces = [headers for path, headers in proxy.requests if path == "/v1/traces"]
    assert traces and all(h.get("x-api-key") == CANARY and h.get("x-team") == "kaggle" for h in traces), \
        "the collector got the header from the secret"

    exported = json.dumps([(s.name, s.attributes, s.resource, s.events) for s in sink.spans()], default=str)
    exported += json.dumps([(p.name, p.attributes, p.resource) for p in sink.metric_points()], default=str)
    exported += json.dumps([vars(r) for r in sink.log_records()], default=str)
    assert CANARY not in everything_said(exported, caplog.text, repr(cfg), cfg.describe(), cfg.warnings)
    assert CANARY not in everything_said(os.environ, os.environ.values())
    assert dict(os.environ) == environ_before, "auto_configure changes no variable"
