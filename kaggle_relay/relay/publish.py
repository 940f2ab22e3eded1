"""Publish the selected checkpoint as a dataset version: the handoff to the next session.

Steps, each of which can refuse with the reason:

1. Scan ``source`` with the runtime's own validator and select one valid
   checkpoint (never a partial or invalid file, never one older than
   ``min_step``).
2. Stage only what the next session needs, flat at the top of the version:
   the checkpoint, ``relay-manifest.json`` rewritten to list that checkpoint
   with ``handoff`` = {"dataset", "version", "run_id"}, and the carried files
   at their paths relative to ``source``. A version is a full snapshot, so a
   carried file that is missing refuses the publish.
3. Create the dataset or a new version (``datasets.publish_folder``), with
   the run id in the version notes, so a rerun finds it instead of creating
   another.
4. Wait until the version is READY and check its file listing (names and
   sizes) against what was staged.

The manifest must name the version it will be part of before that version
exists. The number is predicted as the latest version plus one (1 for a new
dataset). The relay waits for the previous version to be READY first, so
only a publication by someone else in between could change it. The created
number is checked, and a mismatch raises HandoffMismatchError.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kaggle_relay.errors import (
    CheckpointInvalidError,
    ConfigError,
    HandoffMismatchError,
    NoValidCheckpointError,
)
from kaggle_relay.relay import datasets, upload
from kaggle_relay.relay.refs import DatasetRef
from kaggle_relay.runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    load_manifest,
    utc_now,
)
from kaggle_relay.runtime.select import DEFAULT_PATTERNS, scan
from kaggle_relay.runtime.validate import Candidate, file_sha256, known_sha256, remember_sha256

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    """The READY, checked dataset version and what it holds."""

    dataset: DatasetRef
    files: list[str]
    run_id: str
    checkpoint: Candidate | None = None
    #: True when a version carrying this run id already existed and nothing was uploaded.
    reused: bool = False
    sizes: dict[str, int] = field(default_factory=dict)


def publish_checkpoints(
    api: KaggleApi,
    source: Path,
    dataset: DatasetRef,
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    mode: str | None = None,
    carry: Sequence[str] = (),
    run_id: str,
    handoff_note: str = "",
    min_step: int | None = None,
    timeout: float,
    title: str | None = None,
    progress: bool = False,
) -> PublishResult:
    """Validate, stage, publish and check the handoff; see the module docstring.

    Raises NoValidCheckpointError when nothing valid (and new enough) is found,
    ConfigError for a missing carried file or invalid dataset metadata,
    DatasetVersionFailedError, WaitTimeoutError, and CheckpointInvalidError
    when the READY version's listing differs from what was staged.
    """
    dataset = dataset.unversioned()
    selected = select_checkpoint(source, patterns=patterns, require_keys=require_keys, metric=metric, mode=mode, min_step=min_step)
    existing = datasets.find_version_by_notes(api, dataset, run_id)
    version = existing.number if existing else _next_version(api, dataset)
    with tempfile.TemporaryDirectory(prefix="kaggle-relay-stage-") as staging:
        stage = Path(staging)
        sizes = stage_handoff(source, stage, selected, carry=carry, handoff={"dataset": dataset.id, "version": version, "run_id": run_id}, run_id=run_id)
        expect_manifest_hashes(api, stage)
        notes = f"{handoff_note} (run {run_id})".strip() if handoff_note else f"kaggle-relay handoff (run {run_id})"
        waits = datasets.PublishWaits(timeout=timeout, interval=_interval(timeout))
        created = datasets.publish_folder(
            api, dataset, stage, title=title or default_title(dataset), notes=notes,
            marker=run_id, progress=progress, waits=waits,
        )
    if created.version != version:
        raise HandoffMismatchError(
            f"dataset {dataset.id}: the handoff manifest names version {version}, but Kaggle created "
            f"version {created.version} (another publication came in between); publish again",
            expected=version,
            found=created.version,
        )
    datasets.wait_for_ready(api, created, timeout=timeout, interval=_interval(timeout))
    check_listing(api, created, sizes)
    log.info("published %s with %s", created, ", ".join(sorted(sizes)))
    return PublishResult(created, sorted(sizes), run_id, selected, reused=existing is not None, sizes=sizes)


def select_checkpoint(
    source: Path,
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    mode: str | None = None,
    min_step: int | None = None,
) -> Candidate:
    """Return the checkpoint to hand over, or raise NoValidCheckpointError saying why none fits."""
    result = scan([source], patterns=patterns, require_keys=require_keys, metric=metric, mode=mode)
    selected = result.selected
    if selected is None:
        reasons = "; ".join(f"{Path(c.path).name}: {c.reason}" for c in result.rejected) or "no file matches"
        raise NoValidCheckpointError(
            f"no valid checkpoint in {source} (patterns {', '.join(patterns)}): {reasons}",
            searched=result.searched,
            rejected=result.rejected,
        )
    if min_step is not None and (selected.step is None or selected.step < min_step):
        raise NoValidCheckpointError(
            f"the best valid checkpoint {selected.path} is at step {selected.step}, older than the last "
            f"handoff (a new one needs step {min_step} or later); refusing to hand over an older checkpoint",
            searched=result.searched,
            rejected=result.rejected,
        )
    log.info("selected %s (step %s, epoch %s)", selected.path, selected.step, selected.epoch)
    return selected


def stage_handoff(
    source: Path,
    stage: Path,
    selected: Candidate,
    *,
    carry: Sequence[str],
    handoff: dict[str, object],
    run_id: str,
) -> dict[str, int]:
    """Write the checkpoint, its manifest and the carried files into ``stage``; return name -> bytes."""
    checkpoint = Path(selected.path)
    _place(checkpoint, stage / checkpoint.name)
    names = {checkpoint.name: _size(stage / checkpoint.name)}
    _write_manifest(stage, checkpoint, selected, handoff, run_id)
    names[MANIFEST_NAME] = (stage / MANIFEST_NAME).stat().st_size
    for relative, path in _carried_files(source, carry):
        if relative in names or any(relative.startswith(name + "/") for name in names):
            raise ConfigError(
                f"carried file {relative!r} has the same name as the checkpoint or the manifest",
                field="carry",
                hint="rename the carried file",
            )
        _place(path, stage / relative)
        names[relative] = _size(stage / relative)
    return _expand(stage, names)


def expect_manifest_hashes(api: KaggleApi, stage: Path) -> None:
    """Make the upload of each staged checkpoint fail unless its bytes hash to the manifest's sha256."""
    manifest = load_manifest(stage)
    uploader = upload.install(api)
    for entry in manifest.files if manifest else []:
        if entry.sha256 and (stage / entry.file).is_file():
            uploader.expect(stage / entry.file, entry.sha256)


def _write_manifest(stage: Path, checkpoint: Path, selected: Candidate, handoff: dict[str, object], run_id: str) -> None:
    original = load_manifest(checkpoint.parent)
    entry = original.entry(checkpoint.name) if original else None
    if entry is None:
        entry = ManifestEntry(
            file=checkpoint.name,
            bytes=selected.bytes,
            sha256=file_sha256(checkpoint) if checkpoint.is_file() else "",
            format=selected.format,
            epoch=int(selected.epoch) if isinstance(selected.epoch, int) else None,
            step=selected.step,
            metrics=dict(selected.metrics),
            created=selected.created or utc_now(),
            run_id=selected.run_id or run_id,
        )
    manifest = Manifest(
        folder=stage,
        run_id=(original.run_id if original else "") or run_id,
        done=bool(original and original.done),
        handoff=dict(handoff),
        files=[entry],
        events=list(original.events) if original else [],
    )
    manifest.save()


def _carried_files(source: Path, carry: Sequence[str]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for item in carry:
        relative = PurePosixPath(item)
        if relative.is_absolute() or ".." in relative.parts:
            raise ConfigError(f"carried file {item!r} must be a path relative to {source}", field="carry")
        matches = sorted(path for path in source.glob(item) if path.is_file()) if any(c in item for c in "*?[") else []
        if not matches and (source / item).is_file():
            matches = [source / item]
        if not matches:
            raise ConfigError(
                f"carried file {item!r} is not in {source}; a dataset version is a full snapshot, so the "
                "next session would not have it",
                field="carry",
                hint="make the training script write it to /kaggle/working each session, or remove it from carry",
            )
        found.extend((path.relative_to(source).as_posix(), path) for path in matches)
    return found


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` (copy across file systems); folders are copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
        return
    known = known_sha256(source)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        return
    if known is not None:
        # The new link changed the file's ctime, which is part of the hash cache's key.
        remember_sha256(target, known)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def _expand(stage: Path, names: dict[str, int]) -> dict[str, int]:
    """List every staged file (a folder checkpoint counts file by file) with its size."""
    sizes: dict[str, int] = {}
    for name in names:
        path = stage / name
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                if item.is_file():
                    sizes[item.relative_to(stage).as_posix()] = item.stat().st_size
        else:
            sizes[name] = path.stat().st_size
    return sizes


def check_listing(api: KaggleApi, ref: DatasetRef, staged: dict[str, int]) -> None:
    """Raise CheckpointInvalidError when the version's files differ from what was staged."""
    listed = datasets.list_version_files(api, ref)
    for name, size in sorted(staged.items()):
        if name not in listed:
            raise CheckpointInvalidError(
                f"{ref}/{name}", f"missing from the published version (it lists: {', '.join(sorted(listed)) or 'nothing'})"
            )
        if listed[name] != size:
            raise CheckpointInvalidError(f"{ref}/{name}", f"published with {listed[name]} bytes, staged with {size}")
    extra = sorted(set(listed) - set(staged))
    if extra:
        log.warning("dataset %s also lists files that were not staged: %s", ref, ", ".join(extra))


def _next_version(api: KaggleApi, dataset: DatasetRef) -> int:
    latest = datasets.latest_version(api, dataset)
    return latest.number + 1 if latest else 1


def default_title(dataset: DatasetRef) -> str:
    """Return a dataset title (6 to 50 characters) made from the slug."""
    title = dataset.slug.replace("-", " ").title()
    return title if len(title) >= 6 else f"{title} handoff"


def _interval(timeout: float) -> float:
    return min(15.0, max(0.2, timeout / 30))
