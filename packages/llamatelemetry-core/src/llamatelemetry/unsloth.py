"""``llamatelemetry.unsloth``: the Unsloth fine-tuning and export tracing, from a plugin distribution.

This module is the plugin's own top-level module under the core's name: the core's packaging
metadata (entry-point group ``llamatelemetry.extras``) says which module and which extra. Without the
plugin, importing it raises ``PluginNotInstalledError`` (an ImportError) whose message is the
``pip install "llamatelemetry-core[...]"`` command.
"""

from __future__ import annotations

from llamatelemetry.plugins.extras import alias_module

alias_module(__name__)
