"""Detecting a Kaggle notebook from the variable Kaggle sets in its kernels."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

__all__ = ["KaggleEnvironment", "detect"]


@attrs.frozen
class KaggleEnvironment:
    """What the environment says about the Kaggle kernel we run in."""

    #: ``KAGGLE_KERNEL_RUN_TYPE``: ``Interactive`` in the editor, ``Batch`` for a committed run.
    run_type: str

    def resource_attributes(self) -> dict[str, str]:
        """Resource attributes under the ``llamatelemetry.*`` namespace (no standard name exists)."""
        return {"llamatelemetry.platform": "kaggle", "llamatelemetry.kaggle.run_type": self.run_type}


def detect(environ: Mapping[str, str] | None = None) -> KaggleEnvironment | None:
    """The Kaggle kernel we run in, or ``None`` off Kaggle (``KAGGLE_KERNEL_RUN_TYPE`` unset)."""
    env = os.environ if environ is None else environ
    run_type = env.get("KAGGLE_KERNEL_RUN_TYPE", "").strip()
    return KaggleEnvironment(run_type=run_type) if run_type else None
