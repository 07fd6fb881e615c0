"""Tests of ``ArtifactManifest``: hashing, JSON round-trip, relocation and verification."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from llamatelemetry.artifacts import (
    MANIFEST_SCHEMA_VERSION,
    Artifact,
    ArtifactManifest,
    VerificationReport,
    sha256_file,
)
from llamatelemetry.errors import ArtifactVerificationError, LlamaTelemetryError


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A pipeline output folder with a model (larger than the 1 MiB hashing chunk), an adapter and a log."""
    folder = tmp_path / "run"
    write(folder / "model-q4.gguf", os.urandom(2 * 1024 * 1024 + 123))
    write(folder / "adapters" / "lora.safetensors", b"adapter weights" * 100)
    write(folder / "train.log", b"")
    return folder


def build_manifest(folder: Path) -> ArtifactManifest:
    manifest = ArtifactManifest(pipeline_id="run-001", metadata={"base_model": "tiny", "epochs": 2})
    manifest.add(folder / "model-q4.gguf", kind="gguf_model", quant_type="Q4_K_M")
    manifest.add(folder / "adapters" / "lora.safetensors", kind="lora_adapter", rank=8)
    manifest.add(folder / "train.log", kind="log")
    return manifest


# ----------------------------------------------------------------------------- hashing


def test_sha256_file_matches_hashlib(run_dir: Path) -> None:
    for path in (run_dir / "model-q4.gguf", run_dir / "train.log"):
        assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(str(run_dir / "train.log")) == hashlib.sha256(b"").hexdigest()


def test_add_records_sha256_size_kind_and_metadata(run_dir: Path) -> None:
    manifest = ArtifactManifest(pipeline_id="run-001")
    model = run_dir / "model-q4.gguf"
    before = dt.datetime.now(dt.timezone.utc)
    artifact = manifest.add(model, kind="gguf_model", quant_type="Q4_K_M")
    after = dt.datetime.now(dt.timezone.utc)
    data = model.read_bytes()
    assert isinstance(artifact, Artifact)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.size_bytes == len(data) == 2 * 1024 * 1024 + 123
    assert artifact.kind == "gguf_model"
    assert artifact.metadata == {"quant_type": "Q4_K_M"}
    assert Path(artifact.path) == model.resolve()
    created = dt.datetime.fromisoformat(artifact.created_at)
    assert created.tzinfo is not None
    assert before <= created <= after
    assert manifest.get(model) == artifact
    assert manifest.get(str(model)) == artifact
    assert manifest.artifacts == [artifact]
    assert len(manifest) == 1


def test_add_relative_path_uses_base_dir(run_dir: Path) -> None:
    manifest = ArtifactManifest(pipeline_id="p", base_dir=run_dir)
    artifact = manifest.add("adapters/lora.safetensors", kind="lora_adapter")
    assert Path(artifact.path) == (run_dir / "adapters" / "lora.safetensors").resolve()
    assert artifact.size_bytes == len(b"adapter weights" * 100)


def test_readding_a_path_replaces_its_record(run_dir: Path) -> None:
    manifest = ArtifactManifest(pipeline_id="p")
    log = run_dir / "train.log"
    manifest.add(log, kind="log")
    log.write_bytes(b"epoch 1 done\n")
    second = manifest.add(log, kind="training_log")
    assert len(manifest) == 1
    assert manifest.artifacts == [second]
    assert second.kind == "training_log"
    assert second.sha256 == hashlib.sha256(b"epoch 1 done\n").hexdigest()


def test_artifacts_keep_insertion_order(run_dir: Path) -> None:
    manifest = build_manifest(run_dir)
    assert [a.kind for a in manifest] == ["gguf_model", "lora_adapter", "log"]


def test_add_missing_file_names_it(tmp_path: Path) -> None:
    manifest = ArtifactManifest(pipeline_id="p")
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(FileNotFoundError) as excinfo:
        manifest.add(missing, kind="gguf_model")
    assert str(missing) in str(excinfo.value)
    assert len(manifest) == 0


def test_add_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        ArtifactManifest(pipeline_id="p").add(tmp_path, kind="folder")


@pytest.mark.parametrize("kind", ["", None])
def test_add_needs_a_kind(run_dir: Path, kind: object) -> None:
    with pytest.raises(ValueError, match="kind"):
        ArtifactManifest(pipeline_id="p").add(run_dir / "train.log", kind=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("pipeline_id", ["", "   ", None])
def test_pipeline_id_required(pipeline_id: object) -> None:
    with pytest.raises(ValueError, match="pipeline_id"):
        ArtifactManifest(pipeline_id=pipeline_id)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(run_dir: Path) -> None:
    manifest = build_manifest(run_dir)
    saved = manifest.save(run_dir / "manifest.json")
    assert saved == (run_dir / "manifest.json").resolve()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".manifest.json.tmp")]
    loaded = ArtifactManifest.load(saved)
    assert loaded.pipeline_id == "run-001"
    assert loaded.metadata == {"base_model": "tiny", "epochs": 2}
    assert loaded.artifacts == manifest.artifacts
    assert loaded.get(run_dir / "model-q4.gguf") is not None
    assert loaded.get(run_dir / "model-q4.gguf").metadata == {"quant_type": "Q4_K_M"}  # type: ignore[union-attr]
    report = loaded.verify()
    assert report.ok
    assert len(report.verified) == 3


def test_saved_json_uses_relative_posix_paths(run_dir: Path, tmp_path: Path) -> None:
    manifest = build_manifest(run_dir)
    outside = write(tmp_path / "elsewhere" / "notes.txt", b"notes")
    manifest.add(outside, kind="notes")
    data = json.loads(manifest.save(run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert data["schema_version"] == MANIFEST_SCHEMA_VERSION == 1
    assert data["pipeline_id"] == "run-001"
    paths = [entry["path"] for entry in data["artifacts"]]
    assert paths[:3] == ["model-q4.gguf", "adapters/lora.safetensors", "train.log"]
    # A file outside the manifest's folder keeps its absolute path.
    assert paths[3] == str(outside.resolve())
    for entry in data["artifacts"]:
        assert set(entry) >= {"path", "kind", "sha256", "size_bytes", "created_at", "metadata"}


def test_save_creates_parent_folders(run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "deep" / "manifest.json"
    build_manifest(run_dir).save(target)
    assert ArtifactManifest.load(target).verify().ok


def test_relative_paths_survive_moving_the_folder(run_dir: Path, tmp_path: Path) -> None:
    manifest = build_manifest(run_dir)
    manifest.save(run_dir / "manifest.json")
    moved = tmp_path / "copied" / "kaggle-output"
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir)

    loaded = ArtifactManifest.load(moved / "manifest.json")
    report = loaded.verify(strict=True)
    assert report.ok
    assert sorted(report.verified) == sorted(str(p.resolve()) for p in (
        moved / "model-q4.gguf", moved / "adapters" / "lora.safetensors", moved / "train.log"))
    for artifact in loaded:
        assert Path(artifact.path).is_relative_to(moved.resolve())
    # The moved copy is the one that is checked: changing it is detected.
    (moved / "train.log").write_bytes(b"tampered")
    assert loaded.verify().changed == (str((moved / "train.log").resolve()),)


def test_resaving_a_loaded_manifest_keeps_relative_paths(run_dir: Path, tmp_path: Path) -> None:
    build_manifest(run_dir).save(run_dir / "manifest.json")
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    ArtifactManifest.load(moved / "manifest.json").save(moved / "manifest.json")
    data = json.loads((moved / "manifest.json").read_text(encoding="utf-8"))
    assert [e["path"] for e in data["artifacts"]] == ["model-q4.gguf", "adapters/lora.safetensors", "train.log"]


def test_load_adds_relative_to_manifest_folder(run_dir: Path) -> None:
    ArtifactManifest(pipeline_id="p").save(run_dir / "manifest.json")
    loaded = ArtifactManifest.load(run_dir / "manifest.json")
    artifact = loaded.add("train.log", kind="log")
    assert Path(artifact.path) == (run_dir / "train.log").resolve()


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_schema_version_refused(tmp_path: Path, version: object) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": version, "pipeline_id": "p", "artifacts": []}), encoding="utf-8")
    with pytest.raises(ValueError) as excinfo:
        ArtifactManifest.load(path)
    message = str(excinfo.value)
    assert "schema_version" in message
    assert repr(version) in message
    assert f"version {MANIFEST_SCHEMA_VERSION}" in message
    assert "Upgrade" in message


def test_missing_schema_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"pipeline_id": "p", "artifacts": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="schema_version None"):
        ArtifactManifest.load(path)


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "no pipeline_id"),
    (json.dumps({"schema_version": 1}), "no pipeline_id"),
])
def test_load_rejects_non_manifests(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "thing.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=expected) as excinfo:
        ArtifactManifest.load(path)
    assert str(path) in str(excinfo.value)


# ----------------------------------------------------------------------------- verification


def test_verify_detects_changed_same_size_file(run_dir: Path) -> None:
    manifest = build_manifest(run_dir)
    adapter = run_dir / "adapters" / "lora.safetensors"
    original = adapter.read_bytes()
    adapter.write_bytes(original[:-1] + b"X")  # same size, different content
    report = manifest.verify()
    assert not report.ok
    assert report.changed == (str(adapter.resolve()),)
    assert report.missing == ()
    assert len(report.verified) == 2


def test_verify_detects_size_change(run_dir: Path) -> None:
    manifest = build_manifest(run_dir)
    (run_dir / "train.log").write_bytes(b"grew")
    assert manifest.verify().changed == (str((run_dir / "train.log").resolve()),)


def test_verify_changed_and_missing_non_strict(run_dir: Path) -> None:
    manifest = build_manifest(run_dir)
    model, log = (run_dir / "model-q4.gguf").resolve(), (run_dir / "train.log").resolve()
    model.unlink()
    log.write_bytes(b"changed")
    report = manifest.verify()
    assert isinstance(report, VerificationReport)
    assert not report.ok
    assert report.missing == (str(model),)
    assert report.changed == (str(log),)
    assert report.verified == (str((run_dir / "adapters" / "lora.safetensors").resolve()),)
    problems = report.problems()
    assert len(problems) == 2
    assert any(str(model) in p and "missing" in p for p in problems)
    assert any(str(log) in p and "changed" in p for p in problems)


def test_verify_strict_lists_every_problem(run_dir: Path) -> None:
    manifest = build_manifest(run_dir)
    manifest.save(run_dir / "manifest.json")
    model, log = (run_dir / "model-q4.gguf").resolve(), (run_dir / "train.log").resolve()
    model.unlink()
    log.write_bytes(b"changed")
    loaded = ArtifactManifest.load(run_dir / "manifest.json")
    with pytest.raises(ArtifactVerificationError) as excinfo:
        loaded.verify(strict=True)
    err = excinfo.value
    assert isinstance(err, LlamaTelemetryError)
    assert len(err.problems) == 2
    message = str(err)
    assert f"missing: {model}" in message
    assert str(log) in message and "changed" in message


def test_verify_strict_passes_when_intact(run_dir: Path) -> None:
    report = build_manifest(run_dir).verify(strict=True)
    assert report.ok
    assert report.problems() == []


def test_empty_manifest_verifies() -> None:
    manifest = ArtifactManifest(pipeline_id="empty")
    assert manifest.verify(strict=True).ok
    assert len(manifest) == 0
    assert "empty" in repr(manifest)


def test_load_refuses_a_damaged_entry(tmp_path: Path) -> None:
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps({"schema_version": 1, "pipeline_id": "p",
                                         "artifacts": [{"path": "model.gguf", "kind": "gguf_model"}]}))
    with pytest.raises(ValueError, match=r"artifacts\[0\] lacks sha256, size_bytes"):
        ArtifactManifest.load(manifest_path)


def test_make_folders_returns_what_it_made_and_remove_folders_takes_only_those(tmp_path: Path) -> None:
    from llamatelemetry.artifacts import make_folders, remove_folders

    (tmp_path / "kept").mkdir()
    created = make_folders(tmp_path / "kept" / "a" / "b")
    assert created == [tmp_path / "kept" / "a" / "b", tmp_path / "kept" / "a"]
    assert (tmp_path / "kept" / "a" / "b").is_dir()
    assert make_folders(tmp_path / "kept") == []
    remove_folders(created)
    assert not (tmp_path / "kept" / "a").exists() and (tmp_path / "kept").is_dir()
    # A folder that is no longer empty stays.
    created = make_folders(tmp_path / "x" / "y")
    (tmp_path / "x" / "y" / "model.gguf").write_bytes(b"GGUF")
    remove_folders(created)
    assert (tmp_path / "x" / "y" / "model.gguf").is_file()


def test_make_folders_refuses_a_file_where_a_folder_is_needed(tmp_path: Path) -> None:
    from llamatelemetry.artifacts import make_folders

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="file"):
        make_folders(tmp_path / "file" / "sub")
    assert not (tmp_path / "file" / "sub").exists()
