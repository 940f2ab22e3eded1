"""One call for the first lines of a training script: ``start_session``.

Example (a notebook cell or the relay's template script)::

    from kaggle_relay.runtime import start_session, capture_training_state

    session = start_session(patterns=["ckpt-*.pt"], require_keys=["model"], metric="val_loss", mode="min")
    model, optimizer, scheduler = build()
    start_epoch = 0
    if session.checkpoint is not None:
        report = session.resume(model, optimizer, scheduler)
        start_epoch = report.epoch + 1

    for epoch in range(start_epoch, epochs):
        with session.epoch():
            val_loss = train_one_epoch(model, optimizer, scheduler)
        state = capture_training_state(model, optimizer, scheduler, epoch=epoch, step=global_step)
        session.save(state, epoch=epoch, step=global_step, metrics={"val_loss": val_loss})
        if session.should_stop():
            break
    session.finish(done=epoch == epochs - 1)

``start_session`` removes unfinished writes left in the working folder,
checks the accelerator, verifies the handoff dataset when the relay expects
one, selects the best checkpoint across working and input folders, copies it
into the working folder when it came from the read-only input, prints the
diagnostic table, and starts the session clock with SIGTERM handling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kaggle_relay.errors import ConfigError, NoValidCheckpointError
from kaggle_relay.runtime import atomic, discover, writable
from kaggle_relay.runtime.clock import SessionClock
from kaggle_relay.runtime.device import AcceleratorReport, check_accelerator
from kaggle_relay.runtime.diagnose import print_report
from kaggle_relay.runtime.handoff import verify_handoff
from kaggle_relay.runtime.manifest import ManifestEntry
from kaggle_relay.runtime.select import ScanResult, scan
from kaggle_relay.runtime.trust import WORKING, TrustPolicy
from kaggle_relay.runtime.validate import Candidate, validate_checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Session:
    """The state of one Kaggle session of a relayed training run."""

    checkpoint: Candidate | None
    clock: SessionClock
    scan: ScanResult
    accelerator: AcceleratorReport
    handoff: Path | None = None
    origin: Candidate | None = None
    keep: int | None = 3
    metric: str | None = None
    mode: str | None = None
    trust: TrustPolicy | None = None
    folder: Path | None = None

    def load(self, **kwargs: Any) -> Any:
        """Load the selected checkpoint with the session's trust policy; None when there is none."""
        if self.checkpoint is None:
            return None
        from kaggle_relay.runtime.load import load_checkpoint

        kwargs.setdefault("trust", self.trust)
        return load_checkpoint(self.checkpoint, **kwargs)

    def resume(
        self, model: Any, optimizer: Any = None, scheduler: Any = None, **policies: Any
    ) -> Any:
        """Restore a ``capture_training_state`` checkpoint into the objects; return the ResumeReport or None."""
        if self.checkpoint is None:
            return None
        from kaggle_relay.runtime.state import restore_training_state

        return restore_training_state(
            self.load(), model, optimizer, scheduler, manifest_folder=self.folder, **policies
        )

    def save(
        self,
        obj: Any,
        name: str | None = None,
        *,
        epoch: int | None = None,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        compact: bool | str = False,
        done: bool = False,
    ) -> ManifestEntry:
        """Save a checkpoint with the session's retention settings and time it for ``should_stop``.

        ``name`` defaults to ``ckpt-step<step>.pt`` (``ckpt-epoch<epoch>.pt``
        without a step); the session's ``patterns`` must match it for the next
        session to find it.
        """
        from kaggle_relay.runtime.save import save_checkpoint

        name = name or default_name(epoch, step)
        with self.clock.measure("save"):
            return save_checkpoint(
                obj, name, folder=self.folder, epoch=epoch, step=step, metrics=metrics, compact=compact,
                keep=self.keep, metric=self.metric, mode=self.mode, done=done,
            )  # fmt: skip

    def epoch(self) -> contextlib.AbstractContextManager[None]:
        """Time one epoch, so ``should_stop`` keeps room for another."""
        return self.clock.measure("epoch")

    def should_stop(self) -> bool:
        """Tell whether the loop must save and exit now (session time or SIGTERM)."""
        return self.clock.should_stop()

    def finish(self, *, done: bool = False) -> None:
        """End the session: mark the run done when training is finished, and restore the SIGTERM handler."""
        if done:
            from kaggle_relay.runtime.save import mark_done

            mark_done(self.folder)
        self.clock.restore_sigterm_handler()
        log.info("session finished after %.0f s (done=%s)", self.clock.elapsed(), done)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.clock.restore_sigterm_handler()


def default_name(epoch: int | None, step: int | None) -> str:
    if step is not None:
        return f"ckpt-step{step:09d}.pt"
    if epoch is not None:
        return f"ckpt-epoch{epoch:05d}.pt"
    raise ConfigError("a checkpoint needs a name, a step or an epoch", field="name")


def clean_working() -> list[Path]:
    """Remove unfinished writes (files and folders) left by a killed process, only under the working folder."""
    working = writable.working_root()
    removed = atomic.clean_temporaries(working)
    for folder in list(working.rglob(f"{atomic.TEMP_PREFIX}*")) if working.is_dir() else []:
        if folder.is_dir():
            log.warning("removing unfinished folder left by an earlier process: %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _writable_checkpoint(
    candidate: Candidate, require_keys: Sequence[str], metric: str | None
) -> Candidate:
    """Copy an input checkpoint to the working folder and return the copy's candidate."""
    from kaggle_relay.runtime.copy import make_writable_copy

    try:
        copied = make_writable_copy(candidate)
    except ConfigError as exc:
        log.warning("using %s in place: %s", candidate.path, exc)
        return candidate
    return validate_checkpoint(copied, source=WORKING, require_keys=require_keys, metric=metric)


def start_session(
    *,
    patterns: Sequence[str],
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    mode: str | None = None,
    accelerator: str | None = None,
    keep: int | None = 3,
    trust: TrustPolicy | None = None,
    limit: float | None = None,
    folder: str | os.PathLike[str] | None = None,
    report: bool = True,
) -> Session:
    """Prepare a training session and return it with the checkpoint to resume from (or None).

    ``patterns`` are file name globs of the run's checkpoints. ``metric`` and
    ``mode`` ("min" or "max") choose the best checkpoint and protect it from
    pruning. ``accelerator`` defaults to ``KAGGLE_RELAY_ACCELERATOR``,
    ``limit`` (seconds) to the session limit of the environment, ``folder``
    to ``<root>/working/checkpoints``. ``keep`` is how many recent
    checkpoints ``Session.save`` keeps (None keeps all). With ``report`` the
    diagnostic table is printed to stdout.

    Raises AcceleratorMismatchError, HandoffMismatchError, ConfigError, or
    NoValidCheckpointError when an expected handoff contains no valid
    checkpoint, before any training starts.
    """
    removed = clean_working()
    if removed:
        log.warning("removed %d unfinished writes from an earlier session", len(removed))
    device = check_accelerator(accelerator)
    handoff = verify_handoff()

    result = scan(
        None, patterns=patterns, require_keys=require_keys, metric=metric, mode=mode, trust=trust
    )
    if report:
        print_report(result, file=sys.stdout)
    if handoff is not None:
        check_handoff_checkpoint(handoff, result, patterns)
    origin = result.selected
    checkpoint = origin
    if origin is not None and origin.source != WORKING:
        checkpoint = _writable_checkpoint(origin, require_keys, metric)

    clock = SessionClock(accelerator=accelerator, limit=limit)
    clock.install_sigterm_handler()
    target = Path(folder) if folder is not None else writable.default_checkpoint_folder()
    log.info(
        "session started in %s: resuming from %s",
        discover.kaggle_root(),
        checkpoint.path if checkpoint else "scratch",
    )
    return Session(
        checkpoint=checkpoint, clock=clock, scan=result, accelerator=device, handoff=handoff, origin=origin,
        keep=keep, metric=metric, mode=mode, trust=trust, folder=target,
    )  # fmt: skip


def check_handoff_checkpoint(handoff: Path, result: ScanResult, patterns: Sequence[str]) -> None:
    """Raise NoValidCheckpointError unless the mounted handoff folder contains a valid checkpoint.

    Training from scratch there would hand over an older state than the one
    the relay attached, so the session stops with every file found and why
    each was rejected.
    """
    inside = [candidate for candidate in result.candidates if Path(candidate.path).is_relative_to(handoff)]
    if any(candidate.valid for candidate in inside):
        return
    identity = os.environ.get("KAGGLE_RELAY_HANDOFF", "")
    if inside:
        found = "\n".join(f"  {candidate.path}: {candidate.reason}" for candidate in inside)
    else:
        found = f"  no file matching {', '.join(patterns)}"
    raise NoValidCheckpointError(
        f"the handoff {identity} mounted at {handoff} contains no valid checkpoint, so this session would "
        f"train from scratch; found:\n{found}\nCheck the patterns given to start_session and the handoff "
        "dataset's files; the relay publishes only checkpoints it validated",
        searched=[str(handoff)],
        rejected=inside,
    )


@contextlib.contextmanager
def session_scope(**kwargs: Any) -> Iterator[Session]:
    """Run ``start_session(**kwargs)`` for a ``with`` block; the SIGTERM handler is restored after it."""
    session = start_session(**kwargs)
    with session:
        yield session
