"""Where GPU figures come from: NVML, or nvidia-smi where NVML is missing; and which GPUs CUDA sees."""

from __future__ import annotations

import abc
import logging
import os
import shutil
from collections.abc import Mapping, Sequence

from llamatelemetry.errors import LlamaTelemetryError
from llamatelemetry.gpu.records import GPUDevice, GPUReading, GPUSnapshot

__all__ = ["GPUSource", "NoGPUError", "open_source", "list_devices", "visible_device_ids"]

log = logging.getLogger("llamatelemetry.gpu")


class NoGPUError(LlamaTelemetryError, RuntimeError):
    """No NVIDIA GPU can be read here (no driver, no NVML and no nvidia-smi), or no GPU with that index."""


class GPUSource(abc.ABC):
    """An open connection to the GPUs of this machine; close it (or use it in a with-block) when done."""

    #: ``"nvml"`` or ``"nvidia-smi"``.
    kind: str

    @abc.abstractmethod
    def devices(self) -> list[GPUDevice]:
        """Every GPU, in NVML order."""

    @abc.abstractmethod
    def read(self, indices: Sequence[int]) -> list[GPUReading]:
        """A light reading of each GPU in ``indices`` (what the sampler takes every interval)."""

    @abc.abstractmethod
    def snapshot(self, index: int) -> GPUSnapshot:
        """Everything known about GPU ``index`` now; ``NoGPUError`` when there is no such GPU."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; calling it twice is harmless."""

    def __enter__(self) -> GPUSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def no_such_device(index: int, count: int) -> NoGPUError:
    """The error for an index past the last GPU."""
    listing = f"indices 0-{count - 1}" if count else "none"
    return NoGPUError(f"There is no GPU {index}: this machine has {count} NVIDIA GPU(s) ({listing}).")


def open_source() -> GPUSource:
    """Open NVML, or nvidia-smi where NVML is missing and the binary exists; ``NoGPUError`` when neither has a GPU."""
    from llamatelemetry.gpu.nvml import NVMLMissingError, NVMLSource

    try:
        return NVMLSource.open()
    except NVMLMissingError as missing:
        binary = shutil.which("nvidia-smi")
        if binary is None:
            raise NoGPUError(f"No NVIDIA GPU can be read here: {missing}, and nvidia-smi is not on PATH. "
                             "GPU telemetry needs the NVIDIA driver; on a CPU machine leave enable_gpu off.") from None
        from llamatelemetry.gpu.smi import SMISource

        log.debug("NVML is missing (%s); reading GPUs through %s", missing, binary)
        return SMISource.open(binary)


def list_devices() -> list[GPUDevice]:
    """The NVIDIA GPUs of this machine, in NVML order; an empty list (quietly) where there is none."""
    try:
        with open_source() as source:
            return source.devices()
    except NoGPUError as exc:
        log.debug("list_devices: no GPU (%s)", exc)
        return []


def visible_device_ids(devices: Sequence[GPUDevice], env: Mapping[str, str] | None = None) -> list[int]:
    """NVML indices of the GPUs CUDA sees, in CUDA's order: CUDA device ``i`` is NVML device ``result[i]``."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    # Unset: every device. Set: indices or UUID prefixes, and like CUDA we stop at the first entry
    # that names no device ("-1" hides them all).
    if value is None:
        return [device.index for device in devices]
    by_index = {device.index: device for device in devices}
    visible: list[int] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.isdigit() and int(entry) in by_index:
            found: int | None = int(entry)
        elif entry.startswith("GPU-"):
            # CUDA accepts any unambiguous prefix of a UUID.
            matches = [d.index for d in devices if d.uuid.startswith(entry)]
            found = matches[0] if len(matches) == 1 else None
        else:
            found = None
        if found is None or found in visible:
            break
        visible.append(found)
    return visible
