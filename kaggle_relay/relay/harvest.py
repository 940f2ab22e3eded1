"""Harvest a finished kernel version: download, classify how it ended, pick the checkpoint to hand over.

Every finished version is harvested, whatever its status: a run that ended
in ``error`` may still have saved a valid checkpoint before it failed. Only
the files the handoff needs are downloaded (checkpoints by the chain's
patterns, the manifest, carried files) plus the run log. Each checkpoint is
checked with the runtime's own validator, and the newest valid one is handed
over only when it is newer than the last handoff; a truncated file, a file
whose hash does not match its manifest entry, or an older step is never
published, and the log gives the reason.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_relay.errors import CheckpointInvalidError
from kaggle_relay.relay.ledger import CheckpointInfo, Run, work_dir
from kaggle_relay.relay.outputs import OUTPUT_FOLDER, download_outputs
from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.manifest import MANIFEST_NAME, load_manifest
from kaggle_relay.runtime.validate import Candidate, validate_checkpoint

if TYPE_CHECKING:
    from kaggle_relay.relay.chain import Context

log = logging.getLogger(__name__)

# Lines a session killed at its time limit leaves in its log (Kaggle and the emulator).
_TIMEOUT_LINE = re.compile(r"time ?limit|timed? ?out|timeout|exceeded the maximum", re.IGNORECASE)


def download_folder(context: Context, run: Run) -> Path:
    """Return the folder the outputs of ``run`` are downloaded into (with the run log)."""
    return work_dir(context.state_dir, context.chain.name) / "runs" / run.run_id / "download"


def output_folder(context: Context, run: Run) -> Path:
    """Return the folder holding the downloaded output files of ``run``."""
    return download_folder(context, run) / OUTPUT_FOLDER


def harvest(context: Context, run: Run) -> CheckpointInfo | None:
    """Download the outputs of ``run`` and return the checkpoint to hand over, or None.

    Sets ``run.ended_by`` and ``run.outcome`` and records warnings in the ledger.
    """
    from kaggle_relay.relay import chain as chains

    assert run.kernel_version is not None
    dest = download_folder(context, run)
    dest.mkdir(parents=True, exist_ok=True)
    atomic.clean_temporaries(dest)
    outputs = download_outputs(
        context.api,
        context.kernel.with_version(run.kernel_version),
        dest,
        file_pattern=chains.download_pattern(context.chain),
    )
    folder = outputs.folder
    run.ended_by = classify_end(run.status, run.failure_message, _read_log(outputs.log_path))
    if run.ended_by == "time_limit":
        context.ledger.warn(
            f"day {run.day} (version {run.kernel_version}) was stopped at the session time limit",
            hint="the training script's stop margin is too small: stop earlier (a larger margin in "
            "SessionClock) so the last checkpoint is saved before the limit; resuming from the last valid one",
            run_id=run.run_id,
        )

    found = select_newer(context, folder)
    if found is None:
        run.outcome = "no_checkpoint"
        return None
    run.outcome = chains.progress_outcome(context, found)
    return found


def classify_end(status: str, failure_message: str, log_text: str) -> str:
    """Name how a version ended: ``complete``, ``error``, ``time_limit`` or ``cancelled``.

    Kaggle has been seen to end a session killed at its time limit as
    CANCEL_ACKNOWLEDGED with an empty failure message and a timeout line in the log.
    """
    normalized = status.lower().replace("_", "")
    if normalized.endswith("complete"):
        return "complete"
    if normalized.endswith("error"):
        return "error"
    if "cancel" in normalized:
        if not failure_message.strip() and _TIMEOUT_LINE.search(log_text):
            return "time_limit"
        return "cancelled"
    return normalized


def _read_log(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


def candidates(context: Context, folder: Path) -> list[Candidate]:
    """Validate every downloaded file that matches the chain's checkpoint patterns."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or atomic.is_temporary(path.name) or path.name == MANIFEST_NAME:
            continue
        relative = path.relative_to(folder).as_posix()
        if not any(fnmatch.fnmatch(path.name, glob) or fnmatch.fnmatch(relative, glob) for glob in context.chain.patterns):
            continue
        found.append(
            validate_checkpoint(path, require_keys=context.chain.require_keys, metric=context.chain.metric)
        )
    return found


def select_newer(context: Context, folder: Path) -> CheckpointInfo | None:
    """Return the newest valid checkpoint newer than the last handoff, logging every rejection."""
    handoff = context.ledger.data.handoff
    last_step = handoff.checkpoint.step if handoff and handoff.checkpoint else None
    valid = []
    for candidate in candidates(context, folder):
        if not candidate.valid:
            log.warning("rejected %s: %s", Path(candidate.path).name, candidate.reason)
            continue
        if last_step is not None and (candidate.step is None or candidate.step <= last_step):
            log.info("skipped %s: step %s is not newer than the handoff's step %s", Path(candidate.path).name,
                     candidate.step, last_step)
            continue
        valid.append(candidate)
    if not valid:
        return None
    newest = max(valid, key=lambda item: (item.step if item.step is not None else -1, item.created))
    return CheckpointInfo(
        file=Path(newest.path).relative_to(folder).as_posix(),
        epoch=int(newest.epoch) if newest.epoch is not None else None,
        step=newest.step,
        metrics=dict(newest.metrics),
        done=_manifest_done(Path(newest.path).parent),
    )


def _manifest_done(folder: Path) -> bool:
    manifest = load_manifest(folder)
    return bool(manifest and manifest.done)


def verify_published(context: Context, run: Run, ref: Any) -> None:
    """Check the READY version's file list (names and sizes) against what was harvested.

    Raises CheckpointInvalidError naming the missing or different file, so a
    version that lost a file in processing is never attached to a push.
    """
    from kaggle_relay.relay import datasets

    assert run.checkpoint is not None
    listed = datasets.list_version_files(context.api, ref)
    local = output_folder(context, run) / run.checkpoint.file
    expected = {Path(run.checkpoint.file).name: local.stat().st_size, MANIFEST_NAME: None}
    by_name = {Path(name).name: size for name, size in listed.items()}
    for name, size in expected.items():
        if name not in by_name:
            raise CheckpointInvalidError(f"{ref}/{name}", "missing from the published dataset version")
        if size is not None and by_name[name] != size:
            raise CheckpointInvalidError(
                f"{ref}/{name}", f"published size {by_name[name]} differs from the harvested {size} bytes"
            )
