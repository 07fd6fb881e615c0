"""The inference contract (requests, results, the ``LLMBackend`` protocol) and ``create_engine``."""

from __future__ import annotations

from llamatelemetry.inference.api import available_backends, create_engine
from llamatelemetry.inference.base import InferenceRequest, InferenceResult, LLMBackend
from llamatelemetry.inference.engine import InferenceEngine
from llamatelemetry.inference.events import EventRecorder, InferenceEvents
from llamatelemetry.inference.metrics import InferenceMetrics, compute_all_metrics, compute_tps, compute_ttft
from llamatelemetry.inference.types import CudaInferenceConfig, SamplingParams

__all__ = [
    "CudaInferenceConfig",
    "EventRecorder",
    "InferenceEngine",
    "InferenceEvents",
    "InferenceMetrics",
    "InferenceRequest",
    "InferenceResult",
    "LLMBackend",
    "SamplingParams",
    "available_backends",
    "compute_all_metrics",
    "compute_tps",
    "compute_ttft",
    "create_engine",
]
