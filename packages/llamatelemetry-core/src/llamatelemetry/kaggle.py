"""``llamatelemetry.kaggle``: the Kaggle auto-configuration.

Provided by ``llamatelemetry-kaggle``.

This module is the plugin's own top-level module under the core's name. Without the plugin,
importing it raises an ImportError whose message is: pip install "llamatelemetry-core[kaggle]".
"""

from __future__ import annotations

from llamatelemetry.plugins.catalog import alias_module

alias_module(__name__, "kaggle")
