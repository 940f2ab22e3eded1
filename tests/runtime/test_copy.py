"""Tests of make_writable_copy: verified, atomic, idempotent, with the manifest facts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import CheckpointInvalidError, ReadOnlyLocationError
from kaggle_relay.runtime.atomic import TEMP_PREFIX
from kaggle_relay.runtime.copy import make_writable_copy
from kaggle_relay.runtime.manifest import ManifestEntry, load_manifest, load_or_new, sha256_file
from kaggle_relay.runtime.validate import validate_checkpoint


def input_checkpoint(
    kaggle_root: Path, *, with_manifest: bool = True, sha256: str | None = None
) -> Path:
    folder = kaggle_root / "input" / "handoff"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ckpt-step300.pt"
    torch.save({"model": {"w": torch.arange(1000.0)}}, path)
    if with_manifest:
        manifest = load_or_new(folder, run_id="run-7")
        manifest.upsert(
            ManifestEntry(
                file=path.name, bytes=path.stat().st_size, sha256=sha256 or sha256_file(path), format="torch-zip",
                epoch=3, step=300, metrics={"val_loss": 0.2}, created="2026-01-01T00:00:00.000Z", run_id="run-7",
            )
        )  # fmt: skip
        manifest.save()
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_copy_carries_manifest_facts(kaggle_root: Path) -> None:
    source = input_checkpoint(kaggle_root)
    before = tree_digest(kaggle_root / "input")

    copied = make_writable_copy(source)

    assert copied == kaggle_root / "working" / "checkpoints" / "ckpt-step300.pt"
    assert copied.read_bytes() == source.read_bytes()
    manifest = load_manifest(copied.parent)
    assert manifest is not None
    entry = manifest.entry(copied.name)
    assert entry is not None
    assert (entry.epoch, entry.step, entry.metrics, entry.run_id) == (
        3,
        300,
        {"val_loss": 0.2},
        "run-7",
    )
    assert entry.created == "2026-01-01T00:00:00.000Z"
    assert manifest.events[-1]["kind"] == "copy"
    assert tree_digest(kaggle_root / "input") == before


def test_copy_skips_identical_file(kaggle_root: Path) -> None:
    source = input_checkpoint(kaggle_root)
    first = make_writable_copy(source)
    manifest_before = (first.parent / "relay-manifest.json").read_bytes()
    inode = first.stat().st_ino

    second = make_writable_copy(source)

    assert second == first
    assert second.stat().st_ino == inode
    assert (first.parent / "relay-manifest.json").read_bytes() == manifest_before


def test_copy_with_wrong_hash_leaves_nothing(kaggle_root: Path) -> None:
    source = input_checkpoint(kaggle_root, sha256="0" * 64)
    with pytest.raises(CheckpointInvalidError, match="sha256"):
        make_writable_copy(source)
    folder = kaggle_root / "working" / "checkpoints"
    assert not (folder / source.name).exists()
    assert not list(folder.glob(f"{TEMP_PREFIX}*"))


def test_copy_without_manifest_uses_candidate_facts(kaggle_root: Path) -> None:
    source = input_checkpoint(kaggle_root, with_manifest=False)
    candidate = validate_checkpoint(source, source="input_dataset")
    copied = make_writable_copy(candidate)
    manifest = load_manifest(copied.parent)
    assert manifest is not None
    entry = manifest.entry(copied.name)
    assert entry is not None
    assert entry.step == 300
    assert entry.sha256 == sha256_file(source)


def test_copy_keeps_different_file_with_same_name(kaggle_root: Path) -> None:
    source = input_checkpoint(kaggle_root)
    folder = kaggle_root / "working" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(3)}}, folder / source.name)
    newer = (folder / source.name).read_bytes()

    copied = make_writable_copy(source)

    assert copied.name.startswith("ckpt-step300-")
    assert (folder / source.name).read_bytes() == newer


def test_copy_rejects_input_destination(kaggle_root: Path) -> None:
    source = input_checkpoint(kaggle_root)
    with pytest.raises(ReadOnlyLocationError):
        make_writable_copy(source, kaggle_root / "input" / "other")
