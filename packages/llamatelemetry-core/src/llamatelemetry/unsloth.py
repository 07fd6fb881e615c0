"""``llamatelemetry.unsloth``: the Unsloth fine-tuning and export tracing.

Provided by ``llamatelemetry-unsloth``.

This module is the plugin's own top-level module under the core's name. Without the plugin,
importing it raises an ImportError whose message is: pip install "llamatelemetry-core[unsloth]".
"""

from __future__ import annotations

from llamatelemetry.plugins.catalog import alias_module

alias_module(__name__, "unsloth")
