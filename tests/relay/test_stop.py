"""Stop rules: done flag, target metric, no progress for K sessions, max days; and progress itself."""

from __future__ import annotations

from typing import Any

import pytest

from kaggle_relay.relay.config import ChainConfig, StopRules
from kaggle_relay.relay.ledger import Best, CheckpointInfo, DatasetPin, Handoff, LedgerData, Run
from kaggle_relay.relay.stop import (
    no_progress_streak,
    progress_outcome,
    stop_reason,
    trailing_failures,
)


def chain(metric: str | None = "val_acc", mode: str | None = "max", **rules: Any) -> ChainConfig:
    return ChainConfig(name="digits", kernel="alice/digits-train", dataset="alice/digits-handoff",
                       metric=metric, mode=mode, stop=StopRules(**rules))


def ledger(outcomes: list[str], *, done: bool = False, best: float | None = None) -> LedgerData:
    runs = [Run(day=day, run_id=f"r{day}", kernel_version=day, outcome=outcome)
            for day, outcome in enumerate(outcomes, start=1)]
    checkpoint = CheckpointInfo(file="ckpt.pt", epoch=len(outcomes), step=len(outcomes), done=done,
                                metrics={"val_acc": 0.5})
    data = LedgerData(chain="digits", runs=runs)
    if runs:
        data.handoff = Handoff(dataset="alice/digits-handoff", version=1, run_id="r1", checkpoint=checkpoint)
    if best is not None:
        data.best = Best(checkpoint=checkpoint.model_copy(update={"metrics": {"val_acc": best}}), run_id="r1")
    return data


STOP_CASES = [
    # (chain settings, ledger, expected reason fragment or "" to go on)
    pytest.param({}, ledger([]), "", id="fresh-chain-goes-on"),
    pytest.param({}, ledger(["progress"], done=True), "marked the run done", id="done-flag"),
    pytest.param({"done_flag": False}, ledger(["progress"], done=True), "", id="done-flag-off"),
    pytest.param({"target": 0.9}, ledger(["progress"], best=0.95), "reached the target", id="target-max"),
    pytest.param({"target": 0.9}, ledger(["progress"], best=0.85), "", id="target-not-reached"),
    pytest.param({"mode": "min", "target": 0.2}, ledger(["progress"], best=0.1), "reached the target", id="target-min"),
    pytest.param({"mode": "min", "target": 0.2}, ledger(["progress"], best=0.3), "", id="target-min-not-reached"),
    pytest.param({"no_progress_runs": 2}, ledger(["progress", "no_progress", "no_progress"]), "last 2 sessions",
                 id="no-progress"),
    pytest.param({"no_progress_runs": 2}, ledger(["no_progress", "progress", "no_progress"]), "",
                 id="progress-resets-streak"),
    pytest.param({"no_progress_runs": 2}, ledger(["no_progress", "no_checkpoint", "no_progress"]), "last 2 sessions",
                 id="failed-session-does-not-reset-streak"),
    pytest.param({"max_days": 3}, ledger(["progress"] * 3), "max_days (3)", id="max-days"),
    pytest.param({"max_days": 3}, ledger(["progress"] * 2), "", id="below-max-days"),
]


@pytest.mark.parametrize(("settings", "data", "expected"), STOP_CASES)
def test_stop_reason(settings: dict[str, Any], data: LedgerData, expected: str) -> None:
    mode = settings.pop("mode", "max")
    reason = stop_reason(chain(mode=mode, **settings), data)

    if expected:
        assert expected in reason
    else:
        assert reason == ""


def test_unpushed_run_does_not_count_as_a_day() -> None:
    data = ledger(["progress", "progress"])
    data.runs.append(Run(day=3, run_id="r3"))

    assert stop_reason(chain(max_days=3), data) == ""


@pytest.mark.parametrize(
    ("mode", "earlier", "value", "expected"),
    [
        ("max", [], 0.5, "progress"),
        ("max", [0.6, 0.7], 0.8, "progress"),
        ("max", [0.6, 0.7], 0.7, "no_progress"),
        ("min", [0.6, 0.7], 0.5, "progress"),
        ("min", [0.6, 0.7], 0.65, "no_progress"),
    ],
)
def test_progress_outcome(mode: str, earlier: list[float], value: float, expected: str) -> None:
    runs = [Run(day=i, run_id=f"r{i}", checkpoint=CheckpointInfo(file="c.pt", metrics={"val_acc": v}))
            for i, v in enumerate(earlier)]
    found = CheckpointInfo(file="n.pt", metrics={"val_acc": value})

    assert progress_outcome(chain(mode=mode), runs, found) == expected


def test_progress_without_metric_is_a_later_step() -> None:
    runs = [Run(day=1, run_id="r1", checkpoint=CheckpointInfo(file="c.pt", metrics={"val_acc": 0.9}))]

    outcome = progress_outcome(chain(metric=None, mode=None), runs, CheckpointInfo(file="n.pt"))

    assert outcome == "progress"


def test_trailing_failures_counts_the_latest_run_of_failures() -> None:
    runs = [Run(day=i, run_id=f"r{i}", outcome=o) for i, o in
            enumerate(["no_checkpoint", "progress", "no_checkpoint", "no_checkpoint"])]

    assert trailing_failures(runs) == 2
    assert no_progress_streak(runs) == 0


def test_handoff_pin_equality_is_by_value() -> None:
    # check_chain in the end-to-end tests compares pins this way.
    assert DatasetPin(dataset="a/b", version=2) == DatasetPin(dataset="a/b", version=2)
