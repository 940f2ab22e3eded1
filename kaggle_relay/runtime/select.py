"""Find checkpoints across a session's locations, validate them, and select one.

With a metric, the best valid candidate by that metric wins; the direction
(``mode="max"`` for accuracy, ``"min"`` for a loss) is required, because a
default could silently pick the worst. A candidate without a finite value of
the metric is invalid, so it can never be the best.

Without a metric: ``working`` before ``input_dataset`` before
``notebook_output``, then the newest. Newest means the highest step (from the
manifest entry, else the checkpoint, else the file name), then the greatest
run id, then the latest ``created`` time of the manifest entry. File times are
never used, because copies and mounts do not preserve them.

Ties that remain are broken by path, in ascending order, so the same files
always give the same answer. Between two candidates with an equal metric,
the order above (source, then newest) decides first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kaggle_relay.errors import ConfigError, NoValidCheckpointError
from kaggle_relay.runtime import discover
from kaggle_relay.runtime.discover import Location
from kaggle_relay.runtime.manifest import Manifest
from kaggle_relay.runtime.trust import INPUT_DATASET, NOTEBOOK_OUTPUT, WORKING, TrustPolicy
from kaggle_relay.runtime.validate import Candidate, manifest_for, validate_with

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.pt", "*.pth", "*.ckpt", "*.bin", "*.safetensors", "checkpoint-*")
SOURCE_RANK = {WORKING: 0, INPUT_DATASET: 1, NOTEBOOK_OUTPUT: 2}
MODES = ("max", "min")

Root = str | os.PathLike[str] | Location


@dataclass
class ScanResult:
    """Every candidate found (valid or not) and the one selected, or None."""

    selected: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    metric: str | None = None
    mode: str | None = None

    @property
    def rejected(self) -> list[Candidate]:
        return [candidate for candidate in self.candidates if not candidate.valid]

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected.to_dict() if self.selected else None,
            "candidates": [candidate.to_dict() for candidate in self.candidates],
        }


def check_mode(metric: str | None, mode: str | None) -> None:
    """Raise ConfigError (a ValueError) unless ``mode`` fits ``metric``: required with one, unused without."""
    if metric and mode not in MODES:
        raise ConfigError(
            f"metric {metric!r} needs a direction: mode='min' when lower is better (a loss), "
            f"mode='max' when higher is better (accuracy); got mode={mode!r}",
            field="mode",
        )
    if not metric and mode is not None:
        raise ConfigError(f"mode={mode!r} needs a metric to compare; pass metric='name' or drop mode", field="mode")


def scan(
    roots: Iterable[Root] | None = None,
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    mode: str | None = None,
    trust: TrustPolicy | None = None,
) -> ScanResult:
    """Find every file matching ``patterns`` under ``roots``, validate each, and select one.

    ``roots`` defaults to the Kaggle layout (``discover.kaggle_root()``); a
    root with ``working/`` or ``input/`` is read as that layout, and any
    other folder as a ``working`` location.
    """
    check_mode(metric, mode)
    locations = discover.locations_for(roots)
    manifests: dict[str, tuple[Manifest | None, str]] = {}
    candidates = [
        _validate(location, path, manifests, require_keys, metric, trust)
        for location, path in discover.iter_candidates(locations, patterns)
    ]
    selected = select(candidates, metric=metric, mode=mode)
    log.debug("scanned %d locations, %d candidates, selected %s", len(locations), len(candidates), selected and selected.path)
    searched = [str(location.path) for location in locations]
    return ScanResult(selected, candidates, searched, metric, mode)


def _validate(
    location: Location,
    path: str,
    manifests: dict[str, tuple[Manifest | None, str]],
    require_keys: Sequence[str],
    metric: str | None,
    trust: TrustPolicy | None,
) -> Candidate:
    folder, name = os.path.split(path)
    manifest, problem = manifest_for(folder, manifests)
    return validate_with(
        path,
        source=location.source,
        dataset=location.dataset,
        require_keys=require_keys,
        metric=metric,
        entry=manifest.entry(name) if manifest else None,
        manifest_problem=problem,
        policy=trust,
        run_id=manifest.run_id if manifest else "",
    )


def select(candidates: Iterable[Candidate], *, metric: str | None = None, mode: str | None = None) -> Candidate | None:
    """Return the best valid candidate by the rules in the module docstring, or None."""
    check_mode(metric, mode)
    valid = sorted((c for c in candidates if c.valid), key=lambda c: c.path)
    if metric:
        valid = [c for c in valid if c.metric(metric) is not None]
    if not valid:
        return None
    # A stable sort with reverse=True keeps equal candidates in ascending path order.
    return sorted(valid, key=lambda c: _rank(c, metric, mode), reverse=True)[0]


def _rank(candidate: Candidate, metric: str | None, mode: str | None) -> tuple[Any, ...]:
    newest = (
        -SOURCE_RANK.get(candidate.source, len(SOURCE_RANK)),
        candidate.step if candidate.step is not None else -1,
        candidate.run_id,
        candidate.created,
    )
    if not metric:
        return newest
    value = candidate.metric(metric) or 0.0
    return (value if mode == "max" else -value, *newest)


def find_best_checkpoint(
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    *,
    roots: Iterable[Root] | None = None,
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    mode: str | None = None,
    trust: TrustPolicy | None = None,
) -> Candidate:
    """Return the selected checkpoint of ``scan``; raise NoValidCheckpointError listing every rejection."""
    result = scan(roots, patterns=patterns, require_keys=require_keys, metric=metric, mode=mode, trust=trust)
    if result.selected is None:
        raise _no_valid(result, patterns)
    return result.selected


def find_latest_checkpoint(
    patterns: Sequence[str],
    *,
    require_keys: Sequence[str] = (),
    roots: Iterable[Root] | None = None,
    trust: TrustPolicy | None = None,
) -> Candidate:
    """Return the newest valid checkpoint matching any of ``patterns`` (source order first, see module doc)."""
    return find_best_checkpoint(patterns, roots=roots, require_keys=require_keys, trust=trust)


def _no_valid(result: ScanResult, patterns: Sequence[str]) -> NoValidCheckpointError:
    where = ", ".join(result.searched) or "no location (is KAGGLE_RELAY_KAGGLE_ROOT set?)"
    if not result.candidates:
        message = f"no file matching {', '.join(patterns)} in {where}"
    else:
        lines = [f"  {c.path}: {c.reason}" for c in result.rejected[:10]]
        more = len(result.rejected) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        message = f"no valid checkpoint among {len(result.candidates)} candidates in {where}:\n" + "\n".join(lines)
    error = NoValidCheckpointError(message, searched=result.searched, rejected=result.rejected)
    error.hint = "run `kaggle-relay scan --show-invalid` to see every candidate"
    return error
