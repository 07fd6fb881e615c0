"""Detecting a Kaggle notebook: the variables Kaggle sets in its kernels and the ``/kaggle`` folders."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from llamatelemetry_kaggle import semconv

__all__ = ["KaggleEnvironment", "detect", "RUN_TYPE_VARIABLE"]

#: Set by Kaggle in every kernel: ``Interactive`` in the editor, ``Batch`` for a committed run.
RUN_TYPE_VARIABLE = "KAGGLE_KERNEL_RUN_TYPE"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text("utf-8", "replace").strip() or None
    except OSError:
        return None


@attrs.frozen
class KaggleEnvironment:
    """What the environment says about the Kaggle kernel we run in (nothing secret is read).

    Example::

        >>> detect({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"})
        KaggleEnvironment(run_type='Interactive', ...)
    """

    #: ``KAGGLE_KERNEL_RUN_TYPE`` as Kaggle spells it: ``Interactive`` or ``Batch``.
    run_type: str
    #: ``/kaggle/working`` (outputs saved with the notebook), when it exists.
    working_dir: Path | None = None
    #: ``/kaggle/input`` (read-only datasets and models), when it exists.
    input_dir: Path | None = None
    #: ``/etc/build_date`` of the image, when present.
    image_build_date: str | None = None
    #: ``KAGGLE_KERNEL_INTEGRATIONS`` split on ``:`` / ``,``.
    integrations: tuple[str, ...] = ()
    #: ``KAGGLE_DATA_PROXY_PROJECT``: the kernel's data-proxy project, when Kaggle sets it.
    data_proxy_project: str | None = None
    #: Whether ``KAGGLE_USER_SECRETS_TOKEN`` is set (the token itself is never read into this record).
    secrets_token_present: bool = False

    @property
    def run_kind(self) -> str:
        """``interactive``, ``batch``, or the raw value lowercased when Kaggle adds another kind."""
        return self.run_type.strip().lower()

    def resource_attributes(self) -> dict[str, object]:
        """Resource attributes under the ``llamatelemetry.*`` namespace (no standard name exists)."""
        attributes: dict[str, object] = {semconv.PLATFORM: "kaggle", semconv.KAGGLE_RUN_TYPE: self.run_kind}
        if self.image_build_date:
            attributes[semconv.KAGGLE_IMAGE_BUILD_DATE] = self.image_build_date
        if self.integrations:
            attributes[semconv.KAGGLE_INTEGRATIONS] = list(self.integrations)
        if self.data_proxy_project:
            attributes[semconv.KAGGLE_DATA_PROXY_PROJECT] = self.data_proxy_project
        return attributes


def detect(environ: Mapping[str, str] | None = None, *, root: str | os.PathLike[str] = "/") -> KaggleEnvironment | None:
    """The Kaggle kernel we run in, or ``None`` off Kaggle (``KAGGLE_KERNEL_RUN_TYPE`` unset).

    ``root`` is where ``/kaggle`` and ``/etc/build_date`` are looked for (tests use a temporary folder).
    """
    env = os.environ if environ is None else environ
    run_type = env.get(RUN_TYPE_VARIABLE, "").strip()
    if not run_type:
        return None
    base = Path(root)
    working, inputs = base / "kaggle" / "working", base / "kaggle" / "input"
    raw_integrations = env.get("KAGGLE_KERNEL_INTEGRATIONS", "").replace(",", ":")
    return KaggleEnvironment(
        run_type=run_type,
        working_dir=working if working.is_dir() else None,
        input_dir=inputs if inputs.is_dir() else None,
        image_build_date=_read_text(base / "etc" / "build_date"),
        integrations=tuple(part.strip() for part in raw_integrations.split(":") if part.strip()),
        data_proxy_project=env.get("KAGGLE_DATA_PROXY_PROJECT", "").strip() or None,
        secrets_token_present=bool(env.get("KAGGLE_USER_SECRETS_TOKEN")),
    )
