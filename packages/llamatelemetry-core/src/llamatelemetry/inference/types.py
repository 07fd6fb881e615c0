"""Sampling and hardware configuration records, validated on construction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from llamatelemetry.errors import ValidationError

__all__ = ["SamplingParams", "CudaInferenceConfig", "parse_tensor_split"]


def _number(owner: str, field: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(owner, field, value, allowed)
    return float(value)


def _integer(owner: str, field: str, value: Any, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(owner, field, value, allowed)
    return value


def _stop_sequences(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValidationError("SamplingParams", "stop", f"<{type(value).__name__}>", "a list of non-empty strings")
    return tuple(value)


@attrs.frozen
class SamplingParams:
    """How tokens are sampled.

    ``temperature`` 0 means greedy decoding. ``top_k`` 0 disables top-k. ``seed`` makes
    sampling reproducible where the backend supports it.

    Example::

        SamplingParams(temperature=0.0, seed=7, stop=["\\n\\n"])
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=_stop_sequences)

    def __attrs_post_init__(self) -> None:
        owner = "SamplingParams"
        if _number(owner, "temperature", self.temperature, "a finite number >= 0 (0 means greedy)") < 0:
            raise ValidationError(owner, "temperature", self.temperature, "a finite number >= 0 (0 means greedy)")
        top_p = _number(owner, "top_p", self.top_p, "in (0, 1]")
        if not 0 < top_p <= 1:
            raise ValidationError(owner, "top_p", self.top_p, "in (0, 1]")
        if _integer(owner, "top_k", self.top_k, "an integer >= 0 (0 disables top-k)") < 0:
            raise ValidationError(owner, "top_k", self.top_k, "an integer >= 0 (0 disables top-k)")
        if _number(owner, "repeat_penalty", self.repeat_penalty, "a finite number > 0 (1.0 means none)") <= 0:
            raise ValidationError(owner, "repeat_penalty", self.repeat_penalty, "a finite number > 0 (1.0 means none)")
        for field in ("frequency_penalty", "presence_penalty"):
            value = _number(owner, field, getattr(self, field), "in [-2, 2]")
            if not -2 <= value <= 2:
                raise ValidationError(owner, field, value, "in [-2, 2]")
        if self.seed is not None:
            _integer(owner, "seed", self.seed, "an integer or None")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValidationError(owner, "stop", list(self.stop), "a list of non-empty strings")

    @property
    def greedy(self) -> bool:
        """Whether sampling is greedy (temperature 0)."""
        return self.temperature == 0


def parse_tensor_split(value: str | Sequence[float]) -> tuple[float, ...]:
    """Parse ``"1.0,0.0"`` or ``[1.0, 0.0]`` into proportions; raise ``ValidationError`` if malformed."""
    allowed = "comma-separated non-negative numbers with a positive sum, one per GPU, e.g. '1.0,0.0'"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(not p for p in parts):
            raise ValidationError("CudaInferenceConfig", "tensor_split", value, allowed)
        try:
            numbers = tuple(float(p) for p in parts)
        except ValueError:
            raise ValidationError("CudaInferenceConfig", "tensor_split", value, allowed) from None
    else:
        try:
            numbers = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValidationError("CudaInferenceConfig", "tensor_split", value, allowed) from None
    if not numbers or any(math.isnan(n) or math.isinf(n) or n < 0 for n in numbers) or sum(numbers) <= 0:
        raise ValidationError("CudaInferenceConfig", "tensor_split", value, allowed)
    return numbers


def _tensor_split_text(value: str | Sequence[float]) -> str:
    return ",".join(str(n) for n in parse_tensor_split(value))


@attrs.frozen
class CudaInferenceConfig:
    """Where and how a model runs on GPUs (llama.cpp's ``-ngl``, ``--tensor-split``, ``-c``, ``-b``, ``-fa``).

    ``gpu_layers`` -1 offloads every layer and 0 runs on the CPU; ``tensor_split`` gives each
    GPU's share of the model; ``ctx_size`` 0 takes the model's trained context.
    """

    gpu_layers: int = 99
    tensor_split: str = attrs.field(default="1.0,0.0", converter=_tensor_split_text)
    ctx_size: int = 4096
    batch_size: int = 512
    flash_attn: bool = True

    def __attrs_post_init__(self) -> None:
        owner = "CudaInferenceConfig"
        layers_allowed = "an integer >= -1 (-1 = all layers, 0 = CPU only)"
        if _integer(owner, "gpu_layers", self.gpu_layers, layers_allowed) < -1:
            raise ValidationError(owner, "gpu_layers", self.gpu_layers, layers_allowed)
        if _integer(owner, "ctx_size", self.ctx_size, "an integer >= 0 (0 = the model's trained context)") < 0:
            raise ValidationError(owner, "ctx_size", self.ctx_size, "an integer >= 0 (0 = the model's trained context)")
        if _integer(owner, "batch_size", self.batch_size, "an integer >= 1") < 1:
            raise ValidationError(owner, "batch_size", self.batch_size, "an integer >= 1")
        if not isinstance(self.flash_attn, bool):
            raise ValidationError(owner, "flash_attn", self.flash_attn, "True or False")

    @property
    def tensor_split_values(self) -> tuple[float, ...]:
        """Each GPU's share, as numbers."""
        return parse_tensor_split(self.tensor_split)

    @property
    def n_gpus(self) -> int:
        """How many GPUs receive a non-zero share of the model."""
        return sum(1 for share in self.tensor_split_values if share > 0)
