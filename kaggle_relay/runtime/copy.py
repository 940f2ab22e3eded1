"""Copy a read-only checkpoint into the working folder, so the next saves can replace it.

The copy is written under a temporary name in the destination folder and
renamed only after its size and sha256 match the source's manifest entry
(when the source has one), so a killed copy never leaves a half-written
checkpoint under the real name. The manifest facts of the source (epoch,
step, metrics, run id, creation time) move with it into the destination's
manifest. An identical file already in place is not copied again.

This module does not import torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_relay.errors import CheckpointInvalidError, ConfigError, ManifestError
from kaggle_relay.runtime import atomic, formats, writable
from kaggle_relay.runtime.hashing import HashingWriter
from kaggle_relay.runtime.manifest import (
    ManifestEntry,
    load_manifest,
    load_or_new,
    sha256_file,
    utc_now,
)

log = logging.getLogger(__name__)

_COPY_CHUNK = 8 << 20


@dataclass
class CopySource:
    """The file to copy and what is known about it before copying."""

    path: Path
    entry: ManifestEntry | None
    candidate: Any = None


def _source(candidate_or_path: Any) -> CopySource:
    candidate = candidate_or_path if hasattr(candidate_or_path, "source") else None
    path = Path(candidate.path if candidate is not None else candidate_or_path)
    if path.is_dir():
        # NOTE: Trainer checkpoint folders are not copied; the caller gets this error instead.
        raise ConfigError(
            f"{path} is a checkpoint folder, which make_writable_copy does not copy",
            field="path",
            hint="copy the weight file inside it, or load it in place",
        )
    try:
        manifest = load_manifest(path.parent)
    except ManifestError as exc:
        log.warning("ignoring the unusable manifest beside %s: %s", path, exc)
        manifest = None
    entry = manifest.entry(path.name) if manifest is not None else None
    if entry is not None and not entry.run_id and manifest is not None:
        entry.run_id = manifest.run_id
    return CopySource(path, entry, candidate)


def _same_file(path: Path, size: int, sha256: str) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256


def _free_name(folder: Path, source: Path, sha256: str) -> Path:
    """Return where the copy goes: the source's name, or a name with its hash when that one is taken."""
    target = folder / source.name
    if not target.exists() or _same_file(target, source.stat().st_size, sha256):
        return target
    # A different file already has this name, and it may be this session's newer checkpoint.
    return folder / f"{source.stem}-{sha256[:8]}{source.suffix}"


def _copy_verified(source: CopySource, target: Path) -> tuple[int, str]:
    """Copy through a temporary sibling of ``target``; the rename happens only if the bytes match the entry."""
    with (
        atomic.atomic_write(target, "wb") as handle,
        open(source.path, "rb") as reader,
        HashingWriter(handle) as writer,
    ):
        while chunk := reader.read(_COPY_CHUNK):
            writer.write(chunk)
        writer.flush()
        _verify(source, writer.size, writer.hexdigest())
    return writer.size, writer.hexdigest()


def _verify(source: CopySource, size: int, sha256: str) -> None:
    entry = source.entry
    if entry is None:
        return
    if size != entry.bytes:
        raise CheckpointInvalidError(
            str(source.path), f"copied {size} bytes, the manifest says {entry.bytes}"
        )
    if entry.sha256 and sha256 != entry.sha256:
        raise CheckpointInvalidError(
            str(source.path), "sha256 of the copied bytes differs from the manifest"
        )


def _entry_for(target: Path, source: CopySource, size: int, sha256: str) -> ManifestEntry:
    facts = source.entry or source.candidate
    entry = ManifestEntry(
        file=target.name, bytes=size, sha256=sha256, format=formats.detect_format(target)
    )
    if facts is not None:
        step = getattr(facts, "step", None)
        entry.epoch = getattr(facts, "epoch", None)
        entry.step = step
        entry.metrics = dict(getattr(facts, "metrics", {}) or {})
        entry.run_id = getattr(facts, "run_id", "") or ""
        entry.created = getattr(facts, "created", "") or ""
        entry.compact = bool(getattr(facts, "compact", False))
    entry.created = entry.created or utc_now()
    return entry


def make_writable_copy(
    candidate_or_path: Any, dest_folder: str | os.PathLike[str] | None = None
) -> Path:
    """Copy a checkpoint (a path or a scan ``Candidate``) into ``dest_folder`` and return the copy's path.

    ``dest_folder`` defaults to ``<root>/working/checkpoints`` and must not be
    under the input folder. Raises CheckpointInvalidError, leaving no file
    behind, when the copied bytes do not match the source's manifest entry.
    """
    source = _source(candidate_or_path)
    folder = writable.reject_input_path(dest_folder or writable.default_checkpoint_folder())
    folder.mkdir(parents=True, exist_ok=True)

    expected_sha = (
        source.entry.sha256 if source.entry and source.entry.sha256 else sha256_file(source.path)
    )
    target = _free_name(folder, source.path, expected_sha)
    if target.resolve() == source.path.resolve():
        return target
    manifest = load_or_new(folder)
    if _same_file(target, source.path.stat().st_size, expected_sha):
        recorded = manifest.entry(target.name)
        if recorded is not None and recorded.sha256 == expected_sha:
            log.info("%s is already in %s: not copied again", source.path.name, folder)
            return target
        size, sha256 = target.stat().st_size, expected_sha
    else:
        size, sha256 = _copy_verified(source, target)
        log.info("copied %s to %s (%d bytes)", source.path, target, size)

    entry = _entry_for(target, source, size, sha256)
    manifest.upsert(entry)
    manifest.run_id = manifest.run_id or entry.run_id
    manifest.record_event("copy", file=target.name, source=str(source.path))
    manifest.save()
    return target
