"""Weekly accelerator quota: the relay starts no session that would go past it.

Kaggle limits GPU and TPU hours per week and per account, so usage is
summed over the ledgers of every chain in the project. The count is
deliberately conservative, so the relay stays inside Kaggle's quota rather
than working around it:

- a run is charged from its push to the moment the relay saw it finish,
  capped at its session limit (the relay cannot see the exact end time);
- a run still in flight is charged its whole session limit;
- the week is a rolling 7 days counted from each run's push time. Kaggle
  resets its quota once a week, and a rolling window never counts less
  than the time used since that reset.

Usage outside this project (notebooks run by hand) is not seen: lower the
configured hours to leave room for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from kaggle_relay.errors import QuotaExceededError
from kaggle_relay.relay.config import ChainConfig, Quota
from kaggle_relay.relay.ledger import Run

WEEK = dt.timedelta(days=7)


@dataclass(frozen=True)
class Charge:
    """Accelerator seconds charged for one run, from its push time."""

    start: dt.datetime
    seconds: float


@dataclass(frozen=True)
class Usage:
    kind: str
    used_seconds: float
    quota_seconds: float

    @property
    def used_hours(self) -> float:
        return self.used_seconds / 3600

    @property
    def quota_hours(self) -> float:
        return self.quota_seconds / 3600


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def accelerator_kind(shape: str) -> str:
    if shape.startswith("Nvidia"):
        return "gpu"
    if shape.startswith("Tpu"):
        return "tpu"
    return "none"


def charge(run: Run) -> Charge | None:
    """Return what ``run`` costs against its accelerator's quota, or None if nothing was pushed."""
    if not run.pushed_at or run.kernel_version is None:
        return None
    start = parse_time(run.pushed_at)
    limit = float(run.session_limit or 0)
    if run.finished_at is None:
        return Charge(start, limit)
    seconds = max(0.0, (parse_time(run.finished_at) - start).total_seconds())
    return Charge(start, min(seconds, limit) if limit else seconds)


def charges(runs: Iterable[Run], kind: str, *, now: dt.datetime) -> list[Charge]:
    """Return the charges of ``kind`` inside the 7 days before ``now``, oldest first."""
    found = []
    for run in runs:
        if accelerator_kind(run.accelerator) != kind:
            continue
        item = charge(run)
        if item is not None and item.start > now - WEEK:
            found.append(item)
    return sorted(found, key=lambda item: item.start)


def quota_seconds(quota: Quota, kind: str) -> float:
    hours = {"gpu": quota.gpu_hours, "tpu": quota.tpu_hours}.get(kind, 0.0)
    return hours * 3600


def usage(runs: Iterable[Run], quota: Quota, kind: str, *, now: dt.datetime) -> Usage:
    used = sum(item.seconds for item in charges(runs, kind, now=now))
    return Usage(kind=kind, used_seconds=used, quota_seconds=quota_seconds(quota, kind))


def check_quota(runs: Iterable[Run], quota: Quota, chain: ChainConfig, *, now: dt.datetime | None = None) -> None:
    """Raise QuotaExceededError if one more session of ``chain`` could go past the weekly quota.

    ``runs`` are the runs of every chain of the project. The error says when
    enough older runs leave the 7-day window for the session to fit.
    """
    kind = chain.accelerator_kind
    if kind == "none":
        return
    now = now or dt.datetime.now(dt.timezone.utc)
    window = charges(runs, kind, now=now)
    limit = quota_seconds(quota, kind)
    needed = float(chain.session_limit)
    used = sum(item.seconds for item in window)
    if used + needed <= limit:
        return

    available_at = _available_at(window, used, needed, limit)
    when = format_time(available_at) if available_at else "never at this session length"
    hint = (
        f"run `kaggle-relay next-day` again after {when}"
        if available_at
        else f"lower session_timeout below {limit:.0f} s or raise [quota] {kind}_hours"
    )
    error = QuotaExceededError(
        f"chain {chain.name!r}: a {needed / 3600:.1f} h {kind.upper()} session would exceed the weekly quota "
        f"({used / 3600:.1f} h of {limit / 3600:.1f} h used in the last 7 days); it fits from {when}",
        used=used,
        quota=limit,
        available_at=format_time(available_at) if available_at else "",
    )
    error.hint = hint
    raise error


def _available_at(window: list[Charge], used: float, needed: float, limit: float) -> dt.datetime | None:
    if needed > limit:
        return None
    for item in window:
        used -= item.seconds
        if used + needed <= limit:
            return item.start + WEEK
    return None
