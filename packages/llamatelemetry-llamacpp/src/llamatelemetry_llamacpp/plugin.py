"""Entry point of the llama.cpp plugin: what it registers with llamatelemetry."""

from __future__ import annotations

from llamatelemetry.plugins import PresetSpec, hookimpl
from llamatelemetry_llamacpp.presets import PRESETS


@hookimpl
def llamatelemetry_register_presets() -> list[PresetSpec]:
    """The llama.cpp server presets."""
    return [PresetSpec(name=name, values=dict(values), description=description)
            for name, (description, values) in PRESETS.items()]
