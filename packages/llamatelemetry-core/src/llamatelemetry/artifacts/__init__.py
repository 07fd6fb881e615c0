"""``ArtifactManifest``: the files a pipeline produced, with sha256 and size, saved as JSON and verifiable.

Paths inside the manifest's folder are stored relative to it, so a manifest moved together with
its files (a Kaggle output folder, a release archive) still verifies.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from llamatelemetry.errors import ArtifactVerificationError

__all__ = ["Artifact", "ArtifactManifest", "VerificationReport", "sha256_file", "make_folders", "remove_folders",
           "MANIFEST_SCHEMA_VERSION"]

MANIFEST_SCHEMA_VERSION = 1
_CHUNK = 1 << 20


def make_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first, for ``remove_folders``.

    A pipeline stage that writes an output calls it before writing and, if the stage fails, hands the
    list to ``remove_folders`` so that a failed stage leaves no empty folder behind. A file standing
    where a folder is needed raises ``NotADirectoryError`` naming it, before anything is created.
    """
    missing: list[Path] = []
    current = Path(folder)
    while not current.exists():
        missing.append(current)
        current = current.parent
    if not current.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(current))
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return missing


def remove_folders(created: list[Path]) -> None:
    """Remove the folders ``make_folders`` created (deepest first), where they are still empty."""
    for made in created:
        with contextlib.suppress(OSError):
            made.rmdir()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (GGUF files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@attrs.frozen
class Artifact:
    """One recorded file."""

    path: str
    kind: str
    sha256: str
    size_bytes: int
    created_at: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class VerificationReport:
    """What ``ArtifactManifest.verify`` found."""

    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every artifact exists with its recorded content."""
        return not self.missing and not self.changed

    def problems(self) -> list[str]:
        """One line per missing or changed artifact."""
        missing = [f"missing: {p}" for p in self.missing]
        return missing + [f"changed (sha256 or size differs): {p}" for p in self.changed]


class ArtifactManifest:
    """The artifacts of one pipeline run (``pipeline_id``), in the order they were added.

    Example::

        manifest = ArtifactManifest(pipeline_id="run-001")
        manifest.add(path="model-q4.gguf", kind="gguf_model", quant_type="Q4_K_M")
        manifest.save("manifest.json")
        ArtifactManifest.load("manifest.json").verify(strict=True)
    """

    def __init__(self, pipeline_id: str, *, base_dir: str | os.PathLike[str] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(pipeline_id, str) or not pipeline_id.strip():
            raise ValueError("ArtifactManifest needs a non-empty pipeline_id, "
                             "e.g. ArtifactManifest(pipeline_id='run-001').")
        self.pipeline_id = pipeline_id
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._artifacts: dict[str, Artifact] = {}

    # ---------------------------------------------------------------- building

    def _resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        if not candidate.is_absolute() and self._base_dir is not None:
            candidate = self._base_dir / candidate
        return candidate.resolve()

    def add(self, path: str | os.PathLike[str], kind: str, **metadata: Any) -> Artifact:
        """Record ``path`` (hashing it now) as an artifact of ``kind``; re-adding a path replaces its record."""
        if not kind or not isinstance(kind, str):
            raise ValueError("ArtifactManifest.add needs a kind, e.g. kind='gguf_model'.")
        resolved = self._resolve(os.fspath(path))
        if not resolved.is_file():
            raise FileNotFoundError(f"Cannot add artifact {os.fspath(path)!r}: no such file (looked at {resolved}).")
        artifact = Artifact(
            path=str(resolved), kind=kind, sha256=sha256_file(resolved), size_bytes=resolved.stat().st_size,
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(), metadata=dict(metadata),
        )
        self._artifacts[str(resolved)] = artifact
        return artifact

    @property
    def artifacts(self) -> list[Artifact]:
        """The recorded artifacts, in insertion order."""
        return list(self._artifacts.values())

    def __iter__(self) -> Iterator[Artifact]:
        return iter(self.artifacts)

    def __len__(self) -> int:
        return len(self._artifacts)

    def get(self, path: str | os.PathLike[str]) -> Artifact | None:
        """The artifact recorded for ``path``, if any."""
        return self._artifacts.get(str(self._resolve(os.fspath(path))))

    # ---------------------------------------------------------------- persistence

    def to_dict(self, *, relative_to: Path | None = None) -> dict[str, Any]:
        """The manifest as JSON-ready data (paths relative to ``relative_to`` where possible)."""
        def stored(path: str) -> str:
            if relative_to is None:
                return path
            try:
                return Path(path).relative_to(relative_to).as_posix()
            except ValueError:
                return path

        return {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "pipeline_id": self.pipeline_id,
            "metadata": self.metadata,
            "artifacts": [attrs.asdict(a) | {"path": stored(a.path)} for a in self._artifacts.values()],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as JSON (atomically: a reader never sees half a file); returns its path."""
        target = Path(path).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict(relative_to=target.parent)
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
        os.replace(temporary, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ArtifactManifest:
        """Read a manifest written by ``save``; relative paths resolve against the manifest's folder."""
        source = Path(path).expanduser().resolve()
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not a manifest: invalid JSON ({exc}).") from None
        if not isinstance(data, dict) or "pipeline_id" not in data:
            raise ValueError(f"{source} is not an artifact manifest (no pipeline_id).")
        version = data.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"{source} has manifest schema_version {version!r}; this llamatelemetry reads "
                             f"version {MANIFEST_SCHEMA_VERSION}. Upgrade llamatelemetry-core to read it.")
        manifest = cls(data["pipeline_id"], base_dir=source.parent, metadata=data.get("metadata") or {})
        for index, entry in enumerate(data.get("artifacts", [])):
            missing = [key for key in ("path", "kind", "sha256", "size_bytes") if key not in entry]
            if missing:
                raise ValueError(f"{source}: artifacts[{index}] lacks {', '.join(missing)}; the manifest is damaged.")
            resolved = manifest._resolve(entry["path"])
            manifest._artifacts[str(resolved)] = Artifact(
                path=str(resolved), kind=entry["kind"], sha256=entry["sha256"], size_bytes=int(entry["size_bytes"]),
                created_at=entry.get("created_at", ""), metadata=entry.get("metadata") or {},
            )
        return manifest

    # ---------------------------------------------------------------- verification

    def verify(self, *, strict: bool = False) -> VerificationReport:
        """Check every artifact still exists with its recorded size and sha256.

        With ``strict=True`` a problem raises ``ArtifactVerificationError`` listing each one.
        """
        missing: list[str] = []
        changed: list[str] = []
        verified: list[str] = []
        for artifact in self._artifacts.values():
            file = Path(artifact.path)
            if not file.is_file():
                missing.append(artifact.path)
            elif file.stat().st_size != artifact.size_bytes or sha256_file(file) != artifact.sha256:
                changed.append(artifact.path)
            else:
                verified.append(artifact.path)
        report = VerificationReport(tuple(missing), tuple(changed), tuple(verified))
        if strict and not report.ok:
            raise ArtifactVerificationError(report.problems())
        return report

    def __repr__(self) -> str:
        return f"<ArtifactManifest {self.pipeline_id!r} with {len(self)} artifact(s)>"
