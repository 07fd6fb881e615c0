"""GPU figures through the ``nvidia-smi`` binary: the fallback where NVML cannot be loaded but the binary exists.

Each reading spawns a process (tens of milliseconds), so the sampler never samples faster than
once a second through it, and nvidia-smi has no energy counter: the sampler integrates power.
"""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import time
from collections.abc import Sequence

from llamatelemetry.gpu.records import MIB, GPUDevice, GPUProcess, GPUReading, GPUSnapshot
from llamatelemetry.gpu.sources import GPUSource, NoGPUError, no_such_device

__all__ = ["SMISource", "QUERY_FIELDS"]

log = logging.getLogger("llamatelemetry.gpu")

QUERY_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu", "power.draw",
                "power.limit", "temperature.gpu", "clocks.sm", "clocks.mem", "driver_version")
APP_FIELDS = ("gpu_uuid", "pid", "process_name", "used_memory")
_CUDA_VERSION = re.compile(r"CUDA Version:\s*([0-9.]+)")


def _value(text: str) -> str | None:
    # nvidia-smi writes "[N/A]", "[Not Supported]" or "[Not Found]" (a process it cannot name) for what it lacks.
    text = text.strip()
    return None if not text or text.strip("[]") in ("N/A", "Not Supported", "Not Found", "Unknown Error") else text


def _float(text: str) -> float | None:
    value = _value(text)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(text: str) -> int | None:
    value = _float(text)
    return int(value) if value is not None else None


class SMISource(GPUSource):
    """The GPUs as ``nvidia-smi --query-gpu`` reports them."""

    kind = "nvidia-smi"

    def __init__(self, binary: str, *, timeout_s: float = 15.0) -> None:
        self.binary = binary
        self.timeout_s = timeout_s

    @classmethod
    def open(cls, binary: str) -> SMISource:
        """Check that ``binary`` lists at least one GPU; ``NoGPUError`` otherwise."""
        source = cls(binary)
        source._rows()
        return source

    def _run(self, *args: str) -> str:
        try:
            proc = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NoGPUError(f"{self.binary} could not run: {exc}") from None
        if proc.returncode != 0:
            message = (proc.stdout.strip() or proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()[0]
            raise NoGPUError(f"{self.binary} found no usable GPU: {message}")
        return proc.stdout

    def _query(self, flag: str, fields: Sequence[str]) -> list[dict[str, str]]:
        out = self._run(f"{flag}={','.join(fields)}", "--format=csv,noheader,nounits")
        rows = [row for row in csv.reader(out.splitlines(), skipinitialspace=True) if row]
        return [dict(zip(fields, row, strict=False)) for row in rows if len(row) == len(fields)]

    def _rows(self) -> list[dict[str, str]]:
        rows = self._query("--query-gpu", QUERY_FIELDS)
        if not rows:
            raise NoGPUError(f"{self.binary} lists no GPU.")
        return rows

    def _row(self, index: int) -> dict[str, str]:
        rows = self._rows()
        for row in rows:
            if _int(row["index"]) == index:
                return row
        raise no_such_device(index, len(rows))

    def devices(self) -> list[GPUDevice]:
        """Every GPU, in nvidia-smi's (NVML's) order."""
        return [GPUDevice(index=_int(row["index"]) or 0, name=row["name"], uuid=row["uuid"],
                          memory_total_bytes=(_int(row["memory.total"]) or 0) * MIB) for row in self._rows()]

    def read(self, indices: Sequence[int]) -> list[GPUReading]:
        """One nvidia-smi call for all of ``indices``."""
        now = time.monotonic()
        by_index = {_int(row["index"]): row for row in self._rows()}
        readings: list[GPUReading] = []
        for index in indices:
            row = by_index.get(index)
            if row is None:
                raise no_such_device(index, len(by_index))
            readings.append(self._reading(index, row, now))
        return readings

    @staticmethod
    def _reading(index: int, row: dict[str, str], now: float) -> GPUReading:
        utilization = _float(row["utilization.gpu"])
        return GPUReading(
            index=index, time=now, memory_used_bytes=(_int(row["memory.used"]) or 0) * MIB,
            memory_total_bytes=(_int(row["memory.total"]) or 0) * MIB,
            utilization=utilization / 100.0 if utilization is not None else None,
            power_w=_float(row["power.draw"]), energy_j=None, temperature_c=_float(row["temperature.gpu"]),
            sm_clock_mhz=_int(row["clocks.sm"]), memory_clock_mhz=_int(row["clocks.mem"]),
        )

    def snapshot(self, index: int) -> GPUSnapshot:
        """Everything nvidia-smi reports about GPU ``index`` (three calls: GPU, its processes, the CUDA version)."""
        row = self._row(index)
        reading = self._reading(index, row, time.monotonic())
        processes = tuple(
            GPUProcess(pid=_int(app["pid"]) or 0, name=_value(app["process_name"]),
                       used_memory_bytes=None if (used := _int(app["used_memory"])) is None else used * MIB)
            for app in self._query("--query-compute-apps", APP_FIELDS) if app["gpu_uuid"] == row["uuid"]
        )
        match = _CUDA_VERSION.search(self._run())
        return GPUSnapshot(
            device_id=index, name=row["name"], uuid=row["uuid"], timestamp=time.time(),
            memory_used_bytes=reading.memory_used_bytes, memory_total_bytes=reading.memory_total_bytes,
            utilization=reading.utilization, power_w=reading.power_w, power_limit_w=_float(row["power.limit"]),
            energy_j=None, temperature_c=reading.temperature_c, sm_clock_mhz=reading.sm_clock_mhz,
            memory_clock_mhz=reading.memory_clock_mhz, driver_version=_value(row["driver_version"]),
            cuda_version=match.group(1) if match else None, processes=processes, source=self.kind,
        )

    def close(self) -> None:
        """Nothing is held between calls."""
