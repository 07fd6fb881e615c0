"""Entry point of the Kaggle plugin: Kaggle's llama.cpp presets, and resource attributes on Kaggle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llamatelemetry.plugins import PresetSpec, hookimpl
from llamatelemetry_kaggle import semconv
from llamatelemetry_kaggle.presets import preset_specs


@hookimpl
def llamatelemetry_register_presets() -> list[PresetSpec]:
    """``kaggle_t4_dual``, ``kaggle_t4_single`` and ``kaggle_p100``: llama.cpp server flags for Kaggle's GPUs."""
    return preset_specs()


@hookimpl
def llamatelemetry_resource_attributes() -> Mapping[str, Any] | None:
    """Describe the Kaggle notebook on the resource (platform, run type, accelerator); nothing off Kaggle.

    Local look-ups only (environment, ``/etc/build_date``, NVML): the accelerator of the last
    ``auto_configure()`` is reused when there is one. Nothing secret is read.
    """
    from llamatelemetry_kaggle.accelerator import detect_accelerator
    from llamatelemetry_kaggle.configure import last_config
    from llamatelemetry_kaggle.detect import detect

    last = last_config()
    # The environment is read again (it is cheap); the GPUs are not, when auto_configure() has read them.
    environment = detect(root=last.root if last is not None else "/")
    if environment is None:
        return None
    accelerator = last.accelerator if last is not None and last.on_kaggle else detect_accelerator()
    attributes = dict(environment.resource_attributes())
    attributes[semconv.KAGGLE_ACCELERATOR] = accelerator.label
    attributes[semconv.KAGGLE_GPU_COUNT] = accelerator.gpu_count
    if accelerator.gpus:
        attributes[semconv.KAGGLE_GPU_NAMES] = list(accelerator.names)
        attributes[semconv.KAGGLE_GPU_COMPUTE_CAPABILITIES] = [gpu.compute_capability_text or "unknown"
                                                                for gpu in accelerator.gpus]
    return attributes
