"""``auto_configure()``: what a Kaggle notebook has, and how llamatelemetry and llama.cpp should run on it."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from llamatelemetry_kaggle.accelerator import Accelerator, detect_accelerator
from llamatelemetry_kaggle.detect import RUN_TYPE_VARIABLE, KaggleEnvironment, detect
from llamatelemetry_kaggle.libraries import cuda_library_path
from llamatelemetry_kaggle.network import default_probe_address, internet_reachable
from llamatelemetry_kaggle.presets import choose_preset, flash_attention_fits
from llamatelemetry_kaggle.user_secrets import (
    DEFAULT_ENDPOINT_LABEL,
    DEFAULT_HEADERS_LABEL,
    SecretsOutcome,
    read_otlp_secrets,
    redact_endpoint,
    summarize_headers,
)

__all__ = ["KaggleConfig", "TelemetryPlan", "auto_configure", "last_config"]

log = logging.getLogger("llamatelemetry.kaggle")

DEFAULT_SERVICE_NAME = "kaggle-notebook"
TELEMETRY_FILE_NAME = "llamatelemetry-telemetry.jsonl"

# The record of the last auto_configure(), so the resource-attribute hook describes the same
# accelerator without reading the GPUs again. Nothing else reads it.
_last: KaggleConfig | None = None


@attrs.frozen
class TelemetryPlan:
    """Where telemetry goes and why. The endpoint and headers are for the exporters only: ``repr`` hides them."""

    exporter: Literal["otlp", "file", "console"]
    #: Where the choice came from: ``"secrets"`` (Kaggle user secrets), ``"fallback"`` (no usable secret).
    source: Literal["secrets", "fallback"]
    service_name: str = DEFAULT_SERVICE_NAME
    endpoint: str | None = attrs.field(default=None, repr=redact_endpoint)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=summarize_headers)
    #: ``grpc`` or ``http/protobuf``; ``None`` lets ``init()`` decide (its variables, or a guess from the endpoint).
    protocol: str | None = None
    output_file: str | None = None
    enable_gpu: bool = False

    def init_kwargs(self) -> dict[str, Any]:
        """Arguments for ``llamatelemetry.init()``."""
        kwargs: dict[str, Any] = {"service_name": self.service_name, "enable_gpu": self.enable_gpu,
                                  "traces_exporter": self.exporter, "metrics_exporter": self.exporter}
        if self.exporter == "otlp":
            kwargs.update(otlp_endpoint=self.endpoint, headers=dict(self.headers))
            if self.protocol is not None:
                kwargs["protocol"] = self.protocol
        elif self.exporter == "file":
            kwargs["output_file"] = self.output_file
        return kwargs


@attrs.frozen
class KaggleConfig:
    """What ``auto_configure()`` found on this machine and what it will do; nothing secret shows in ``repr``.

    Example::

        cfg = auto_configure()
        cfg.on_kaggle, cfg.reason        # True, 'KAGGLE_KERNEL_RUN_TYPE=Interactive'
        cfg.accelerator.label, cfg.preset  # 'T4 x2', 'kaggle_t4_dual'
        cfg.telemetry                    # TelemetryPlan(exporter='otlp', ..., headers=<2 set>)
        llamatelemetry.init(**cfg.init_kwargs())
    """

    on_kaggle: bool
    #: Why we think so (the variable and its value), or why not.
    reason: str
    #: ``interactive`` or ``batch`` (``KAGGLE_KERNEL_RUN_TYPE``); ``None`` off Kaggle.
    run_type: str | None = None
    accelerator: Accelerator = attrs.field(factory=Accelerator)
    #: Whether Kaggle's web address answered a short TCP connect; ``None`` when not checked (off Kaggle).
    internet: bool | None = None
    working_dir: Path | None = None
    input_dir: Path | None = None
    #: The llama.cpp preset for this accelerator (``kaggle_t4_dual``, ``kaggle_t4_single``, ``kaggle_p100``, ...).
    preset: str | None = None
    preset_reason: str | None = None
    #: Whether llama.cpp's flash attention fits every GPU here (compute capability >= 7.0).
    flash_attention: bool = False
    #: Folders with CUDA libraries for the llama.cpp servers we start (``ServerManager(library_path=...)``).
    library_path: tuple[str, ...] = ()
    #: ``None`` off Kaggle: nothing is changed there.
    telemetry: TelemetryPlan | None = None
    #: What did not go as hoped (a missing secret, internet off), each said once as a warning.
    warnings: tuple[str, ...] = ()
    #: Whether ``auto_configure(init=True)`` started telemetry.
    initialized: bool = False
    #: What Kaggle's variables and files said (image build date, integrations); ``None`` off Kaggle.
    environment: KaggleEnvironment | None = None
    #: Where ``/kaggle`` and the CUDA folders were looked for (``/`` but in tests).
    root: Path = Path("/")

    def init_kwargs(self) -> dict[str, Any]:
        """Arguments for ``llamatelemetry.init()``; empty off Kaggle (init's own defaults apply)."""
        return self.telemetry.init_kwargs() if self.telemetry is not None else {}

    def server_manager(self, **options: Any) -> Any:
        """A llama.cpp ``ServerManager`` whose servers get ``library_path`` (needs the llama.cpp plugin)."""
        # Through the core's name: without the llama.cpp plugin this raises the exact pip install command.
        llama = importlib.import_module("llamatelemetry.llama")
        return llama.ServerManager(library_path=self.library_path, **options)

    def quick_start(self, model_path: str | os.PathLike[str], **options: Any) -> Any:
        """``quick_start`` with this notebook's preset and library path; returns the ``ServerManager``."""
        llama = importlib.import_module("llamatelemetry.llama")
        options.setdefault("preset", self.preset or "cpu")
        return llama.quick_start(model_path, library_path=self.library_path, **options)

    def describe(self) -> str:
        """A few secret-free lines for a notebook cell's output."""
        if not self.on_kaggle:
            return f"not on Kaggle ({self.reason}): nothing configured"
        gpus = ", ".join(f"{g.name} {g.memory_total_mib} MiB cc {g.compute_capability_text}"
                         for g in self.accelerator.gpus) or "none"
        plan = self.telemetry
        where = "-" if plan is None else {"otlp": f"OTLP to {redact_endpoint(plan.endpoint)} "
                                                  f"(headers {summarize_headers(plan.headers)})",
                                          "file": f"file {plan.output_file}", "console": "console"}[plan.exporter]
        return "\n".join([
            f"Kaggle {self.run_type} notebook ({self.reason})",
            f"  accelerator  {self.accelerator.label}: {gpus}",
            f"  internet     {'on' if self.internet else 'off' if self.internet is False else 'not checked'}",
            f"  folders      working {self.working_dir}, input {self.input_dir}",
            f"  llama.cpp    preset {self.preset} ({self.preset_reason}); flash attention "
            f"{'on' if self.flash_attention else 'off'}; library path {os.pathsep.join(self.library_path) or '-'}",
            f"  telemetry    {where}",
        ])


def last_config() -> KaggleConfig | None:
    """The record of the last ``auto_configure()`` in this process, if any."""
    return _last


def _output_file(environment: KaggleEnvironment) -> str | None:
    folder = environment.working_dir
    if folder is not None and os.access(folder, os.W_OK):
        return str(folder / TELEMETRY_FILE_NAME)
    return None


def _plan(environment: KaggleEnvironment, internet: bool | None, accelerator: Accelerator, *,
          service_name: str, endpoint_label: str, headers_label: str, protocol: str | None,
          secrets_timeout_s: float) -> tuple[TelemetryPlan, str | None]:
    """Where telemetry goes: OTLP from the secrets, else a file in the working folder, else the console."""
    if internet is False:
        outcome = SecretsOutcome("internet_off", "the notebook's internet is off, so Kaggle secrets cannot be read "
                                                 "and no collector can be reached (turn it on: Settings > Internet)")
    else:
        outcome = read_otlp_secrets(endpoint_label=endpoint_label, headers_label=headers_label,
                                    timeout_s=secrets_timeout_s)
    enable_gpu = accelerator.gpu_count > 0
    if outcome.status == "read":
        return TelemetryPlan("otlp", "secrets", service_name, endpoint=outcome.endpoint, headers=outcome.headers,
                             protocol=protocol, enable_gpu=enable_gpu), None
    output_file = _output_file(environment)
    fallback = (TelemetryPlan("file", "fallback", service_name, output_file=output_file, enable_gpu=enable_gpu)
                if output_file else TelemetryPlan("console", "fallback", service_name, enable_gpu=enable_gpu))
    where = f"the file {output_file}" if output_file else "the console"
    warning = f"Kaggle: no OTLP export: {outcome.message}. Telemetry goes to {where} instead."
    return fallback, warning


def auto_configure(
    *,
    init: bool = False,
    root: str | os.PathLike[str] = "/",
    service_name: str | None = None,
    endpoint_secret: str = DEFAULT_ENDPOINT_LABEL,
    headers_secret: str = DEFAULT_HEADERS_LABEL,
    protocol: str | None = None,
    internet_probe: tuple[str, int] | None = None,
    check_internet: bool = True,
    internet_timeout_s: float = 1.5,
    secrets_timeout_s: float = 10.0,
    environ: Mapping[str, str] | None = None,
) -> KaggleConfig:
    """Detect the Kaggle notebook, its GPUs, internet and secrets; return what to do (and start telemetry if ``init``).

    Changes no environment variable and nothing off Kaggle. ``root`` is where ``/kaggle`` and the
    system's CUDA folders are looked for (tests use a temporary folder); ``internet_probe`` is the
    (host, port) the internet check connects to (default: Kaggle's own address). Secrets come from
    ``kaggle_secrets.UserSecretsClient`` under the labels ``endpoint_secret`` and ``headers_secret``
    (``protocol``: ``grpc`` or ``http/protobuf`` for that endpoint, else ``init()``'s rules);
    a missing secret, a notebook without secrets, or internet off gives one warning and a file (or
    console) export, never an exception.
    """
    global _last
    env = os.environ if environ is None else environ
    environment = detect(env, root=root)
    if environment is None:
        config = KaggleConfig(on_kaggle=False, reason=f"{RUN_TYPE_VARIABLE} is not set")
        if init:
            log.info("auto_configure(init=True): not on Kaggle, so telemetry was not started; call "
                     "llamatelemetry.init() yourself")
        _last = config
        return config

    accelerator = detect_accelerator()
    internet: bool | None = None
    if check_internet:
        internet = internet_reachable(internet_probe or default_probe_address(env), internet_timeout_s)
    preset, preset_reason = choose_preset(accelerator)
    plan, warning = _plan(environment, internet, accelerator,
                          service_name=service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
                          endpoint_label=endpoint_secret, headers_label=headers_secret, protocol=protocol,
                          secrets_timeout_s=secrets_timeout_s)
    if warning is not None:
        log.warning("%s", warning)
    config = KaggleConfig(
        on_kaggle=True, reason=f"{RUN_TYPE_VARIABLE}={environment.run_type}", run_type=environment.run_kind,
        accelerator=accelerator, internet=internet, working_dir=environment.working_dir,
        input_dir=environment.input_dir, preset=preset, preset_reason=preset_reason,
        flash_attention=flash_attention_fits(accelerator), library_path=cuda_library_path(root),
        telemetry=plan, warnings=(warning,) if warning else (), environment=environment, root=Path(root),
    )
    _last = config
    if init:
        import llamatelemetry

        llamatelemetry.init(**config.init_kwargs())
        config = attrs.evolve(config, initialized=True)
        _last = config
    return config
