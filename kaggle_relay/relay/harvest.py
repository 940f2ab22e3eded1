"""Harvest a finished kernel version: download, classify how it ended, pick the checkpoint to hand over.

Every finished version is harvested, whatever its status: a run that ended
in ``error`` may still have saved a valid checkpoint before it failed. Only
the files the handoff needs are downloaded, plus the run log: manifests,
carried files, checkpoints no manifest records, and of the recorded ones the
newest valid one and the best by metric (see ``fetch_needed``). Each
downloaded checkpoint is checked with the runtime's own validator. The newest
valid one is handed over only when it is newer than the last handoff. A
truncated file, a file whose hash does not match its manifest entry, or an
older step is never published, and the log gives the reason.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kaggle_relay.errors import CheckpointInvalidError
from kaggle_relay.relay import stop
from kaggle_relay.relay.config import ChainConfig
from kaggle_relay.relay.ledger import Best, CheckpointInfo, Run, work_dir
from kaggle_relay.relay.outputs import OUTPUT_FOLDER, OutputSet, open_outputs
from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.manifest import MANIFEST_NAME, ManifestEntry, load_manifest
from kaggle_relay.runtime.validate import Candidate, validate_checkpoint

if TYPE_CHECKING:
    from kaggle_relay.relay.chain import Context

log = logging.getLogger(__name__)

# Lines a session killed at its time limit leaves in its log (Kaggle and the emulator).
_TIMEOUT_LINE = re.compile(r"time ?limit|timed? ?out|timeout|exceeded the maximum", re.IGNORECASE)
_LOG_TAIL = 2000


def download_folder(context: Context, run: Run) -> Path:
    """Return the folder the outputs of ``run`` are downloaded into (with the run log)."""
    return work_dir(context.state_dir, context.chain.name) / "runs" / run.run_id / "download"


def output_folder(context: Context, run: Run) -> Path:
    """Return the folder holding the downloaded output files of ``run``."""
    return download_folder(context, run) / OUTPUT_FOLDER


def harvest(context: Context, run: Run) -> CheckpointInfo | None:
    """Download the outputs of ``run`` and return the checkpoint to hand over, or None.

    Sets ``run.ended_by``, ``run.outcome`` and ``run.partial``, updates the
    chain's best checkpoint, and records warnings in the ledger: a stop at the
    session time limit, rejected checkpoint files, and outputs without a manifest.
    """
    assert run.kernel_version is not None
    dest = download_folder(context, run)
    dest.mkdir(parents=True, exist_ok=True)
    atomic.clean_temporaries(dest)
    last = context.ledger.data.handoff
    last_step = last.checkpoint.step if last and last.checkpoint else None
    # "harvest.download" and "harvest.validate" are parts of the "harvest" timing, not added to it.
    with context.timed("harvest.download"):
        listing = open_outputs(
            context.api,
            context.kernel.with_version(run.kernel_version),
            dest,
            file_pattern=download_pattern(context.chain),
        )
        skipped = fetch_needed(listing, context.chain, last_step)
        outputs = listing.finish()
    run.ended_by = classify_end(run.status, run.failure_message, _read_log(outputs.log_path))
    if run.ended_by == "time_limit":
        context.ledger.warn(
            f"day {run.day} (version {run.kernel_version}) was stopped at the session time limit; "
            "its outputs are lost, so the chain resumes from the last valid checkpoint",
            hint="the training script's stop margin is too small: stop earlier (a larger margin in "
            "SessionClock) so the last checkpoint is saved before the limit",
            run_id=run.run_id,
        )

    with context.timed("harvest.validate"):
        found = examine(outputs.folder, context.chain, last_step=last_step)
    report(context, run, found)
    if skipped:
        log.info("not downloaded (the manifest lists them as neither the newest nor the best): %s",
                 ", ".join(Path(c.path).name for c in skipped))
    # Skipped checkpoints still count as evidence of a restart, by the steps their manifest records.
    evidence = found.valid + skipped
    restart = find_restart(evidence, last.checkpoint) if last and last.checkpoint and run.handoff_in else None
    if restart is not None:
        _fail_restart(context, run, restart, last)
        return None
    _update_best(context, run, found)
    if found.newest is None:
        run.outcome = stop.NO_CHECKPOINT
        return None
    run.outcome = stop.progress_outcome(context.chain, context.ledger.runs[:-1], found.newest)
    run.partial = run.ended_by != "complete"
    return found.newest


def fetch_needed(listing: OutputSet, chain: ChainConfig, last_step: int | None) -> list[Candidate]:
    """Download what the handoff needs from ``listing``; return the checkpoints left on Kaggle.

    A checkpoint that a manifest in the outputs records is downloaded only
    when it is the newest one newer than ``last_step`` that turns out valid
    (trying the next newest after an invalid one), or the best by the chain's
    metric. Everything else that matches (manifests, carried files,
    checkpoints no manifest records) is downloaded and validated as before.
    The returned stand-ins carry the steps, epochs and metrics the manifest
    records, for the restart check. They are not validated, so a corrupt file
    among them is never reported as rejected.
    """
    manifests = [name for name in listing.names if PurePosixPath(name).name == MANIFEST_NAME]
    listing.fetch(manifests)
    recorded = _recorded_checkpoints(listing, manifests)
    listing.fetch([name for name in listing.names if name not in recorded and name not in manifests])

    newer = [name for name, entry in recorded.items() if last_step is None or (entry.step is not None and entry.step > last_step)]
    newer.sort(key=lambda name: (_step_or_minus(recorded[name].step), recorded[name].created), reverse=True)
    for name in newer:
        path = listing.fetch([name])[0]
        if validate_checkpoint(path, require_keys=chain.require_keys, metric=chain.metric).valid:
            break
    best = _best_recorded(recorded, chain)
    if best is not None:
        listing.fetch([best])
    fetched = set(listing.fetched)
    return [
        Candidate(
            path=str(listing.folder / name), format=entry.format, bytes=entry.bytes, valid=True,
            epoch=entry.epoch, step=entry.step, metrics=dict(entry.metrics), run_id=entry.run_id,
            created=entry.created, notes=["recorded in the manifest; not downloaded"],
        )
        for name, entry in recorded.items()
        if name not in fetched
    ]


def _recorded_checkpoints(listing: OutputSet, manifests: list[str]) -> dict[str, ManifestEntry]:
    """Map each listed checkpoint that a downloaded manifest records to its entry."""
    recorded: dict[str, ManifestEntry] = {}
    for name in manifests:
        try:
            manifest = load_manifest(listing.path_of(name).parent)
        except (ValueError, OSError) as error:
            log.warning("unreadable %s (%s); downloading every checkpoint beside it", name, error)
            continue
        if manifest is None:
            continue
        parent = PurePosixPath(name).parent
        for entry in manifest.files:
            listed = (parent / entry.file).as_posix()
            if listed in listing.accepted and entry.sha256:
                recorded[listed] = entry
    return recorded


def _best_recorded(recorded: dict[str, ManifestEntry], chain: ChainConfig) -> str | None:
    metric = chain.metric
    if not metric:
        return None
    scored = [(name, entry.metrics.get(metric)) for name, entry in recorded.items()]
    finite = [(name, value) for name, value in scored if value is not None and math.isfinite(value)]
    if not finite:
        return None
    sign = -1.0 if chain.mode == "min" else 1.0
    return max(finite, key=lambda item: (sign * item[1], _step_or_minus(recorded[item[0]].step)))[0]


def _step_or_minus(step: int | None) -> int:
    return step if step is not None else -1


@dataclass
class Examination:
    """The checkpoints found in the downloaded outputs of one session, sorted by what the relay does with them."""

    newest: CheckpointInfo | None
    """The newest valid checkpoint newer than the last handoff: the next resume point."""
    best: CheckpointInfo | None
    """The best valid checkpoint by the chain's metric, whatever its step; None without a metric."""
    rejected: list[Candidate] = field(default_factory=list)
    older: list[Candidate] = field(default_factory=list)
    """Valid checkpoints not newer than the last handoff (a copy of the handoff itself, for one)."""
    manifest_found: bool = True
    checkpoint_files: int = 0
    valid: list[Candidate] = field(default_factory=list)


def examine(folder: Path, chain: ChainConfig, *, last_step: int | None) -> Examination:
    """Validate every checkpoint under ``folder`` and pick the resume point and the best by metric."""
    everything = candidates(folder, chain)
    valid = [candidate for candidate in everything if candidate.valid]
    newer = [c for c in valid if last_step is None or (c.step is not None and c.step > last_step)]
    newest = max(newer, key=lambda c: (c.step if c.step is not None else -1, c.created), default=None)
    return Examination(
        newest=_info(folder, newest) if newest else None,
        best=_best(folder, valid, chain),
        rejected=[candidate for candidate in everything if not candidate.valid],
        older=[candidate for candidate in valid if candidate not in newer],
        manifest_found=any(folder.rglob(MANIFEST_NAME)),
        checkpoint_files=len(everything),
        valid=valid,
    )


@dataclass(frozen=True)
class Restart:
    """Evidence that a session trained from scratch although a handoff was attached."""

    unit: str
    """``step``, or ``epoch`` when the checkpoints record no step."""
    lowest: int | float
    newest: int | float
    handed: int | float


def find_restart(valid: list[Candidate], handed: CheckpointInfo) -> Restart | None:
    """Return the evidence when the session's checkpoints start below the handed-over checkpoint.

    The handoff dataset carries one checkpoint, so a valid checkpoint below
    its step can only come from this session. One whose epoch is beyond the
    handoff's is not counted: that script resumed but reset its step counter.

    NOTE: a from-scratch run that passed the handoff's step goes unnoticed when
    retention pruned all its checkpoints below that step, because only steps are compared, not contents.
    """
    unit = "step" if handed.step is not None else "epoch"
    limit = handed.step if handed.step is not None else handed.epoch
    if limit is None:
        return None

    def position(candidate: Candidate) -> int | float | None:
        return candidate.step if unit == "step" else candidate.epoch

    placed = [(position(c), c) for c in valid if position(c) is not None]
    behind = [
        value for value, c in placed
        if value is not None and value < limit
        and (c.epoch is None or handed.epoch is None or c.epoch <= handed.epoch)
    ]
    if not behind:
        return None
    newest = max(value for value, _ in placed if value is not None)
    return Restart(unit=unit, lowest=min(behind), newest=newest, handed=limit)


def _fail_restart(context: Context, run: Run, restart: Restart, last: Any) -> None:
    """Fail the chain at once: every further session of this script would train from scratch again."""
    run.outcome = stop.RESTARTED
    unit = restart.unit
    message = (
        f"day {run.day} (version {run.kernel_version}) started from scratch: its checkpoints restart at "
        f"{unit} {restart.lowest} and reach {unit} {restart.newest}, but the handoff it was given "
        f"({last.dataset} version {last.version}) held {unit} {restart.handed}"
    )
    log.error("%s", message)
    context.ledger.fail(
        message,
        hint="make the training script resume: it must load `session.checkpoint` (or call "
        "`session.resume(model, optimizer, scheduler)`) and continue from the epoch and step stored there; "
        "check it with `kaggle-relay rehearse`, then run `kaggle-relay next-day --retry`",
        run_id=run.run_id,
    )


def _best(folder: Path, valid: list[Candidate], chain: ChainConfig) -> CheckpointInfo | None:
    metric = chain.metric
    if not metric:
        return None
    scored = [c for c in valid if c.metric(metric) is not None]
    if not scored:
        return None
    sign = -1.0 if chain.mode == "min" else 1.0
    best = max(scored, key=lambda c: (sign * (c.metric(metric) or 0.0), c.step if c.step is not None else -1))
    return _info(folder, best)


def _info(folder: Path, candidate: Candidate) -> CheckpointInfo:
    return CheckpointInfo(
        file=Path(candidate.path).relative_to(folder).as_posix(),
        epoch=int(candidate.epoch) if candidate.epoch is not None else None,
        step=candidate.step,
        metrics=dict(candidate.metrics),
        done=_manifest_done(Path(candidate.path).parent),
    )


def report(context: Context, run: Run, found: Examination) -> None:
    """Log every decision and keep the ones a user must see as ledger warnings."""
    where = f"day {run.day} (version {run.kernel_version})"
    for candidate in found.older:
        log.info("skipped %s: step %s is not newer than the last handoff", Path(candidate.path).name, candidate.step)
    if found.rejected:
        reasons = "; ".join(f"{Path(c.path).name}: {c.reason}" for c in found.rejected)
        log.warning("%s: rejected %s", where, reasons)
        context.ledger.warn(
            f"{where}: rejected {len(found.rejected)} checkpoint file(s): {reasons}",
            hint="a file cut short by the end of the session is expected; anything else points at the saving code",
            run_id=run.run_id,
        )
    if found.checkpoint_files and not found.manifest_found:
        message = (
            f"{where}: the outputs hold no {MANIFEST_NAME}, so the checkpoint files were validated "
            "directly (format, keys, completeness) without the manifest's size and hash check"
        )
        log.warning("%s", message)
        context.ledger.warn(message, hint="save checkpoints with the runtime's save_checkpoint", run_id=run.run_id)
    if found.newest is not None and run.ended_by != "complete":
        context.say("day %d ended %s but left a valid checkpoint (%s); the day counts as partial",
                    run.day, run.ended_by, found.newest.file)


def _update_best(context: Context, run: Run, found: Examination) -> None:
    best, metric = found.best, context.chain.metric
    if best is None or metric is None:
        return
    value = best.metrics[metric]
    current = context.ledger.data.best
    previous = current.checkpoint.metrics.get(metric) if current else None
    if previous is not None and not stop.better(value, previous, context.chain.mode):
        return
    path = output_folder(context, run) / best.file
    context.ledger.data.best = Best(
        checkpoint=best, run_id=run.run_id, metric=metric, mode=context.chain.mode or "", kernel_version=run.kernel_version,
        path=path.relative_to(context.state_dir).as_posix(),
    )
    log.info("new best %s = %.4g: %s of %s", metric, value, best.file, run.run_id)


def classify_end(status: str, failure_message: str, log_text: str) -> str:
    """Name how a version ended: ``complete``, ``error``, ``time_limit`` or ``cancelled``.

    Kaggle has been seen to end a session killed at its time limit as
    CANCEL_ACKNOWLEDGED with an empty failure message and a timeout line at
    the end of the log. Only the log's tail is read, so a training script
    that prints "timeout=30" earlier is not mistaken for a kill.

    NOTE: a user's cancel whose own last lines mention a timeout still reads
    as a time-limit kill. The run's duration cannot tell them apart here,
    because a rehearsal's emulator enforces a shorter limit than the chain's.
    """
    normalized = status.lower().replace("_", "")
    if normalized.endswith("complete"):
        return "complete"
    if normalized.endswith("error"):
        return "error"
    if "cancel" in normalized:
        if not failure_message.strip() and _TIMEOUT_LINE.search(log_text[-_LOG_TAIL:]):
            return "time_limit"
        return "cancelled"
    return normalized


def _read_log(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


def candidates(folder: Path, chain: ChainConfig) -> list[Candidate]:
    """Validate every file under ``folder`` that matches the chain's checkpoint patterns."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or atomic.is_temporary(path.name) or path.name == MANIFEST_NAME:
            continue
        relative = path.relative_to(folder).as_posix()
        if not any(fnmatch.fnmatch(path.name, glob) or fnmatch.fnmatch(relative, glob) for glob in chain.patterns):
            continue
        found.append(validate_checkpoint(path, require_keys=chain.require_keys, metric=chain.metric))
    return found


def download_pattern(chain: ChainConfig) -> str:
    """Return the regex of output names to download: checkpoints, the manifest and carried files."""
    globs = [*chain.patterns, MANIFEST_NAME, *chain.carry]
    return "(?:^|/)(?:" + "|".join(fnmatch.translate(glob) for glob in globs) + ")"


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
