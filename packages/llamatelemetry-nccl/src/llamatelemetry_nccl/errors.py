"""The exceptions of the NCCL plugin; each message says what to do next."""

from __future__ import annotations

from llamatelemetry.errors import ConfigurationError, LlamaTelemetryError

__all__ = ["CollectiveTracingError", "NoProcessGroupError", "TorchNotInstalledError", "SpansModeError"]

ENGINE_INSTALL_COMMAND = 'pip install "llamatelemetry-nccl[engine]"'


class CollectiveTracingError(LlamaTelemetryError):
    """Base class of the NCCL plugin's errors."""


class TorchNotInstalledError(CollectiveTracingError, ImportError):
    """torch is needed to run a collective (``NCCLTracer.trace_*``)."""

    def __init__(self) -> None:
        super().__init__(f"Tracing collectives needs torch (torch.distributed). Install it: {ENGINE_INSTALL_COMMAND}")


class NoProcessGroupError(CollectiveTracingError, RuntimeError):
    """A collective was asked for before ``torch.distributed.init_process_group()``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs an initialized process group: call torch.distributed.init_process_group() "
                         "on every rank first.")


class SpansModeError(CollectiveTracingError, ConfigurationError):
    """An unknown ``spans=`` mode (argument or ``LLAMATELEMETRY_NCCL_SPANS``)."""

    def __init__(self, value: str, origin: str) -> None:
        super().__init__(f"{origin}={value!r} is not a spans mode: use 'sampled' (default), 'all' or 'off'.")
