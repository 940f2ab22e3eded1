"""Checkpoint retention: small policies decide which files to keep, one function deletes.

Each policy is named after its rule and returns the files it keeps with a
reason. A file is deleted only when no policy keeps it. The standard set,
built by ``retention_policies``:

- ``KeepNewest(n)``: the ``n`` newest valid checkpoints;
- ``KeepBest(metric, mode)``: the valid checkpoint with the best finite value
  of ``metric`` (a checkpoint without the metric is never the best);
- ``KeepNewestValid()``: the newest checkpoint that is complete on disk.

"Newest" is the manifest's ``step``, then ``created``, never the file time,
which copies and mounts do not keep. A file is valid when it exists and its
size matches the manifest entry (and its sha256 with ``verify_hash=True``).
Invalid files never count toward ``n``, so a corrupt newer file cannot push
a valid one out. They are left in place for inspection. Only files listed in
the manifest are considered, so files a user saved by other means are never
deleted.

Every decision is logged at DEBUG. Deletions, and files kept only by the best
or newest-valid rule, are also recorded as manifest events.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kaggle_relay.errors import ConfigError
from kaggle_relay.runtime import writable
from kaggle_relay.runtime.manifest import Manifest, ManifestEntry, load_or_new, sha256_file

log = logging.getLogger(__name__)

def resolve_mode(metric: str, mode: str | None) -> str:
    """Return ``mode`` after checking that it is "min" or "max" for ``metric``.

    The direction is never guessed from the metric's name, so retention and
    selection (``select.check_mode``) agree and neither can keep the worst.
    """
    from kaggle_relay.runtime.select import check_mode

    check_mode(metric, mode)
    assert mode is not None
    return mode


@dataclass
class RetentionItem:
    """One checkpoint of a manifest as the retention policies see it."""

    file: str
    bytes: int
    step: int | None = None
    created: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    problem: str = ""

    def sort_key(self) -> tuple[int, str]:
        return (self.step if self.step is not None else -1, self.created)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return None
        return float(value)


@dataclass
class Decision:
    """Whether one checkpoint is kept, and why."""

    file: str
    keep: bool
    reason: str
    bytes: int = 0
    kept_by: tuple[str, ...] = ()


class RetentionPolicy(Protocol):
    def describe(self) -> str: ...

    def select(self, items: Sequence[RetentionItem]) -> dict[str, str]:
        """Return the files this rule keeps, each with the reason."""
        ...


def newest_first(items: Sequence[RetentionItem]) -> list[RetentionItem]:
    return sorted((item for item in items if item.valid), key=RetentionItem.sort_key, reverse=True)


@dataclass(frozen=True)
class KeepNewest:
    count: int

    def describe(self) -> str:
        return f"keep newest {self.count}"

    def select(self, items: Sequence[RetentionItem]) -> dict[str, str]:
        kept = newest_first(items)[: max(self.count, 0)]
        return {
            item.file: f"among the newest {self.count} valid (step {item.step})" for item in kept
        }


@dataclass(frozen=True)
class KeepBest:
    metric: str
    mode: str

    def describe(self) -> str:
        return f"keep best by {self.metric} ({self.mode})"

    def select(self, items: Sequence[RetentionItem]) -> dict[str, str]:
        scored = [(item.metric(self.metric), item) for item in newest_first(items)]
        with_metric = [(value, item) for value, item in scored if value is not None]
        if not with_metric:
            return {}
        # Ties go to the newest, because newest_first put it first and min/max keep the first.
        pick = min if self.mode == "min" else max
        value, best = pick(with_metric, key=lambda pair: pair[0])
        return {best.file: f"best {self.metric} = {value:g} ({self.mode})"}


@dataclass(frozen=True)
class KeepNewestValid:
    def describe(self) -> str:
        return "keep newest valid"

    def select(self, items: Sequence[RetentionItem]) -> dict[str, str]:
        newest = newest_first(items)
        return (
            {newest[0].file: f"newest valid checkpoint (step {newest[0].step})"} if newest else {}
        )


def retention_policies(
    keep: int, metric: str | None = None, mode: str | None = None
) -> list[RetentionPolicy]:
    """Return the standard rules: newest ``keep``, the best by ``metric``, and the newest valid."""
    policies: list[RetentionPolicy] = [KeepNewest(keep)]
    if metric:
        policies.append(KeepBest(metric, resolve_mode(metric, mode)))
    policies.append(KeepNewestValid())
    return policies


def protection_policies(
    metric: str | None = None, mode: str | None = None
) -> list[RetentionPolicy]:
    """Return the rules that protect a file even when disk space runs out: the best and the newest valid."""
    policies: list[RetentionPolicy] = []
    if metric:
        policies.append(KeepBest(metric, resolve_mode(metric, mode)))
    policies.append(KeepNewestValid())
    return policies


def plan_retention(
    items: Sequence[RetentionItem], policies: Sequence[RetentionPolicy]
) -> list[Decision]:
    """Decide for every item, oldest first, whether the policies keep it."""
    kept: dict[str, list[str]] = {}
    kept_by: dict[str, list[str]] = {}
    for policy in policies:
        for file, reason in policy.select(items).items():
            kept.setdefault(file, []).append(reason)
            kept_by.setdefault(file, []).append(policy.describe())

    rules = ", ".join(policy.describe() for policy in policies)
    decisions = []
    for item in sorted(items, key=RetentionItem.sort_key):
        if not item.valid:
            decision = Decision(
                item.file, True, f"invalid ({item.problem}): not counted, left in place", item.bytes
            )
        elif item.file in kept:
            decision = Decision(
                item.file, True, "; ".join(kept[item.file]), item.bytes, tuple(kept_by[item.file])
            )
        else:
            decision = Decision(item.file, False, f"no rule keeps it ({rules})", item.bytes)
        log.debug(
            "retention: %s %s: %s",
            "keep" if decision.keep else "delete",
            decision.file,
            decision.reason,
        )
        decisions.append(decision)
    return decisions


def plan_space_release(
    items: Sequence[RetentionItem], needed: int, policies: Sequence[RetentionPolicy]
) -> list[Decision]:
    """Choose the oldest unprotected checkpoints whose deletion frees at least ``needed`` bytes.

    Returns an empty list when deleting every unprotected checkpoint would
    still not free enough, so the caller can refuse the save without deleting anything.
    """
    protected: set[str] = set()
    for policy in policies:
        protected.update(policy.select(items))
    chosen: list[Decision] = []
    freed = 0
    for item in sorted(items, key=RetentionItem.sort_key):
        if freed >= needed:
            break
        if item.valid and item.file not in protected:
            chosen.append(
                Decision(
                    item.file,
                    False,
                    f"oldest unprotected checkpoint, freed for a save of {needed} bytes",
                    item.bytes,
                )
            )
            freed += item.bytes
    return chosen if freed >= needed else []


def _check_file(folder: Path, entry: ManifestEntry, verify_hash: bool) -> str:
    """Return why the file of ``entry`` is not usable, or "" when it is."""
    path = folder / entry.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    if size != entry.bytes:
        return f"size {size} bytes, manifest says {entry.bytes}"
    if verify_hash and entry.sha256 and sha256_file(path) != entry.sha256:
        return "sha256 differs from the manifest"
    return ""


def retention_items(
    manifest: Manifest, *, pattern: str | None = None, verify_hash: bool = False
) -> list[RetentionItem]:
    """Build the retention view of the manifest entries whose file name matches ``pattern``."""
    items = []
    for entry in manifest.files:
        if pattern and not fnmatch.fnmatch(entry.file, pattern):
            continue
        problem = _check_file(manifest.folder, entry, verify_hash)
        items.append(
            RetentionItem(
                file=entry.file,
                bytes=entry.bytes,
                step=entry.step,
                created=entry.created,
                metrics=dict(entry.metrics),
                valid=not problem,
                problem=problem,
            )
        )
    return items


def delete_checkpoints(
    manifest: Manifest, decisions: Sequence[Decision], *, event: str = "prune"
) -> list[str]:
    """Delete the files the decisions do not keep, update the manifest in memory and record the events.

    The caller saves the manifest. Refuses a manifest folder outside the working folder.
    """
    writable.require_working_path(manifest.folder)
    deleted = []
    for decision in decisions:
        if decision.keep:
            continue
        log.info("deleting checkpoint %s: %s", decision.file, decision.reason)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(manifest.folder / decision.file)
        manifest.remove(decision.file)
        manifest.record_event(
            event, file=decision.file, reason=decision.reason, bytes=decision.bytes
        )
        deleted.append(decision.file)
    return deleted


def _record_protections(manifest: Manifest, decisions: Sequence[Decision], keep: int) -> None:
    # A file kept only by the best or newest-valid rule is worth a line in the history,
    # because someone counting files will otherwise wonder why there are more than keep.
    newest_rule = KeepNewest(keep).describe()
    for decision in decisions:
        if decision.kept_by and newest_rule not in decision.kept_by:
            manifest.record_event(
                "retain",
                file=decision.file,
                reason=f"{decision.reason}; outside keep newest {keep}",
            )


def prune_checkpoints(
    folder: str | os.PathLike[str] | None = None,
    *,
    keep: int,
    metric: str | None = None,
    mode: str | None = None,
    pattern: str | None = None,
    verify_hash: bool = False,
    dry_run: bool = False,
) -> list[Decision]:
    """Delete the checkpoints of ``folder`` that no retention rule keeps, and return every decision.

    ``folder`` defaults to ``<root>/working/checkpoints`` and must lie under
    the working folder. With ``dry_run`` nothing is deleted or written.
    """
    if keep < 1:
        raise ConfigError(
            f"keep={keep} is invalid", field="keep", hint="keep at least 1 checkpoint"
        )
    folder = writable.require_working_path(folder or writable.default_checkpoint_folder())
    manifest = load_or_new(folder)
    decisions = plan_retention(
        retention_items(manifest, pattern=pattern, verify_hash=verify_hash),
        retention_policies(keep, metric, mode),
    )
    if dry_run or all(decision.keep for decision in decisions):
        return decisions

    delete_checkpoints(manifest, decisions)
    _record_protections(manifest, decisions, keep)
    manifest.save()
    return decisions
