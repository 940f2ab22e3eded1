"""The ledger: what the relay did for one chain, written before and after every step.

One ledger per chain lives in ``.relay/<chain>.json`` beside relay.toml,
with ``.relay/<chain>.lock`` (held while a process advances the chain) and
``.relay/<chain>.log`` (the log of every tick). Each change rewrites the
whole file atomically, so a reader sees the previous or the next record,
never a torn one. A step is journalled as ``begin`` before it touches Kaggle
and as ``end`` after. A ``begin`` without its ``end`` tells the next run
that a crash happened inside that step, so it checks Kaggle before going on.

Schema version 1, a sample::

    {
      "schema": 1,
      "chain": "digits",
      "state": "running",
      "updated": "2026-12-04T21:02:11.120Z",
      "handoff": {"dataset": "alice/digits-handoff", "version": 2, "run_id": "d002-…",
                  "checkpoint": {"file": "ckpt-0004.pt", "epoch": 4, "step": 400,
                                 "metrics": {"val_acc": 0.91}, "done": false}},
      "best": {"checkpoint": {"file": "checkpoints/ckpt-0004.pt", "epoch": 4, "…": "…"},
               "run_id": "d002-…", "metric": "val_acc", "mode": "max", "kernel_version": 2,
               "path": "digits/runs/d002-…/download/output/checkpoints/ckpt-0004.pt",
               "dataset_version": 2},
      "runs": [
        {"day": 3, "run_id": "d003-20261204T210200-5c1e", "kernel": "alice/digits",
         "kernel_version": 3, "handoff_in": {"dataset": "alice/digits-handoff", "version": 2},
         "accelerator": "none", "pushed_at": "…", "finished_at": null, "status": "running",
         "failure_message": "", "ended_by": "", "seconds": 0.0, "checkpoint": null,
         "published": null, "outcome": "", "partial": false, "failed_versions": [],
         "publish_attempts_left": 3}
      ],
      "error": null,
      "warnings": [],
      "steps": [
        {"time": "…", "step": "push", "phase": "begin", "run_id": "d003-…"},
        {"time": "…", "step": "push", "phase": "end", "run_id": "d003-…", "kernel_version": 3}
      ]
    }

States: ``idle`` (nothing in flight, the next step is a push), ``running``
(a version was pushed), ``publishing`` (its checkpoint is being published),
``waiting`` (the new dataset version is processing), ``done`` and
``failed``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field, ValidationError

from kaggle_relay.errors import ChainLockedError, ConfigError
from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.manifest import utc_now

SCHEMA_VERSION = 1
State = Literal["idle", "running", "publishing", "waiting", "done", "failed"]
TERMINAL_STATES = ("done", "failed")


class CheckpointInfo(BaseModel):
    """The checkpoint a run handed over."""

    file: str
    epoch: int | None = None
    step: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    done: bool = False


class DatasetPin(BaseModel):
    dataset: str
    version: int


class Handoff(BaseModel):
    """The last dataset version that was published, seen READY and checked."""

    dataset: str
    version: int
    run_id: str
    checkpoint: CheckpointInfo | None = None


class Run(BaseModel):
    """One pushed kernel version (a "day")."""

    day: int
    run_id: str
    kernel: str = ""
    kernel_version: int | None = None
    handoff_in: DatasetPin | None = None
    accelerator: str = "none"
    session_limit: int = 0
    pushed_at: str = ""
    finished_at: str | None = None
    status: str = ""
    failure_message: str = ""
    ended_by: str = ""
    seconds: float = 0.0
    checkpoint: CheckpointInfo | None = None
    published: DatasetPin | None = None
    outcome: str = ""
    partial: bool = False
    """The session ended early (error, time limit, cancel) but left a valid checkpoint."""
    failed_versions: list[int] = Field(default_factory=list)
    """Dataset versions of this run's handoff that ended FAILED; each retry publishes under a new marker."""
    publish_attempts_left: int = 3


def publish_marker(run: Run) -> str:
    """Return the marker of the run's current publication: in the version notes and the handoff identity.

    It is the run id, with a suffix after each FAILED version, so that the
    lookup by notes after a crash never finds a version that failed.
    """
    if not run.failed_versions:
        return run.run_id
    return f"{run.run_id}.retry{len(run.failed_versions)}"


class Best(BaseModel):
    """The best checkpoint by the chain's metric among every harvest, which may be older than the handoff."""

    checkpoint: CheckpointInfo
    run_id: str
    metric: str = ""
    mode: str = ""
    kernel_version: int | None = None
    path: str = ""
    """Its harvested copy, relative to the state folder (``.relay/``)."""
    dataset_version: int | None = None
    """The handoff dataset version that carries it, when it was the checkpoint handed over."""


class Problem(BaseModel):
    """An error or warning shown by ``status``, with what to do about it."""

    time: str
    message: str
    hint: str = ""
    run_id: str = ""


class Stopped(BaseModel):
    """The stop rule that ended a chain in ``done``; ``done_flag`` means training itself finished."""

    rule: str
    reason: str
    time: str = ""


class LedgerData(BaseModel):
    schema_: int = Field(default=SCHEMA_VERSION, alias="schema")
    chain: str
    state: State = "idle"
    updated: str = ""
    handoff: Handoff | None = None
    best: Best | None = None
    runs: list[Run] = Field(default_factory=list)
    error: Problem | None = None
    stopped: Stopped | None = None
    warnings: list[Problem] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(default_factory=list)

    model_config = {"populate_by_name": True}


class Ledger:
    """The ledger file of one chain, loaded in memory; every change is saved at once."""

    def __init__(self, path: Path, data: LedgerData) -> None:
        self.path = path
        self.data = data

    # --- loading and saving -------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, chain: str) -> Ledger:
        """Load the ledger of ``chain`` from ``state_dir``, or start an empty one."""
        path = ledger_path(state_dir, chain)
        if not path.exists():
            return cls(path, LedgerData(chain=chain))
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            data = LedgerData.model_validate(raw)
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ConfigError(
                f"{path}: ledger cannot be read: {exc}",
                path=str(path),
                hint="restore it from a backup, or delete it to start the chain over",
            ) from exc
        if data.schema_ > SCHEMA_VERSION:
            raise ConfigError(
                f"{path}: ledger schema {data.schema_} is newer than this kaggle-relay ({SCHEMA_VERSION})",
                path=str(path),
                hint="upgrade kaggle-relay",
            )
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data.updated = utc_now()
        text = self.data.model_dump_json(by_alias=True, indent=2) + "\n"
        atomic.write_text(self.path, text)

    # --- journal ------------------------------------------------------------

    def begin(self, step: str, **details: Any) -> None:
        """Journal that ``step`` starts, and save, before it touches Kaggle."""
        self._journal(step, "begin", details)

    def end(self, step: str, **details: Any) -> None:
        """Journal that ``step`` finished, and save."""
        self._journal(step, "end", details)

    def open_step(self) -> dict[str, Any] | None:
        """Return the last ``begin`` that has no ``end``: a step a crash interrupted."""
        if self.data.steps and self.data.steps[-1]["phase"] == "begin":
            return self.data.steps[-1]
        return None

    def _journal(self, step: str, phase: str, details: dict[str, Any]) -> None:
        self.data.steps.append({"time": utc_now(), "step": step, "phase": phase, **details})
        self.save()

    # --- state --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.data.state

    def set_state(self, state: State) -> None:
        self.data.state = state
        self.save()

    @property
    def runs(self) -> list[Run]:
        return self.data.runs

    @property
    def current(self) -> Run | None:
        return self.data.runs[-1] if self.data.runs else None

    @property
    def days(self) -> int:
        return sum(1 for run in self.data.runs if run.kernel_version is not None)

    def fail(self, message: str, *, hint: str = "", run_id: str = "") -> None:
        self.data.error = Problem(time=utc_now(), message=message, hint=hint, run_id=run_id)
        self.data.state = "failed"
        self.save()

    def warn(self, message: str, *, hint: str = "", run_id: str = "") -> None:
        self.data.warnings.append(Problem(time=utc_now(), message=message, hint=hint, run_id=run_id))
        self.save()


def ledger_path(state_dir: Path, chain: str) -> Path:
    return state_dir / f"{chain}.json"


def log_path(state_dir: Path, chain: str) -> Path:
    return state_dir / f"{chain}.log"


def work_dir(state_dir: Path, chain: str) -> Path:
    """Return the folder for downloads, staging folders and bundles of ``chain``."""
    return state_dir / chain


def list_chains(state_dir: Path) -> list[str]:
    """Name every chain that has a ledger in ``state_dir``."""
    if not state_dir.is_dir():
        return []
    return sorted(path.stem for path in state_dir.glob("*.json") if not atomic.is_temporary(path.name))


@contextlib.contextmanager
def chain_lock(state_dir: Path, chain: str) -> Iterator[None]:
    """Hold the chain's lock file; raise ChainLockedError when another process holds it.

    The lock is advisory (``flock``) and is released by the kernel when its
    holder dies, so a killed tick never leaves the chain locked.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state_dir / f"{chain}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise ChainLockedError(chain, f"(lock file {lock.lock_file})") from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def chain_log(state_dir: Path, chain: str) -> Iterator[Path]:
    """Copy the ``kaggle_relay`` log of this tick to ``.relay/<chain>.log``."""
    path = log_path(state_dir, chain)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{chain}] %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("kaggle_relay")
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
