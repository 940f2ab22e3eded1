"""Stop rules of a chain: when the relay pushes no further session.

The rules are read from relay.toml (``[chain.stop]``) and evaluated from the
ledger alone, before every push. A crash between the handoff and the stop
decision therefore cannot make the relay push a session the rules forbid:
the next tick evaluates them again. In order:

1. ``done_flag``: the handed-over manifest has ``done`` set by the training script;
2. ``target``: the best value of the chain's metric reached the target;
3. ``no_progress_runs``: that many sessions in a row handed over a checkpoint
   whose metric is not better than every earlier one. Sessions that left no
   newer checkpoint are skipped over, because ``max_failed_runs`` rules them;
4. ``max_days``: that many sessions were pushed.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaggle_relay.relay.config import ChainConfig
from kaggle_relay.relay.ledger import CheckpointInfo, LedgerData, Run

PROGRESS = "progress"
NO_PROGRESS = "no_progress"
NO_CHECKPOINT = "no_checkpoint"
DONE_FLAG = "done_flag"
RESTARTED = "restarted"
"""Outcome of a session that trained from scratch although a handoff was attached; it fails the chain."""


@dataclass(frozen=True)
class StopDecision:
    """Why a chain pushes no further session: the rule of ``[chain.stop]`` that fired and a sentence."""

    rule: str
    """``done_flag``, ``target``, ``no_progress_runs`` or ``max_days``."""
    reason: str

    @property
    def finished(self) -> bool:
        """Tell whether training itself ended (the script marked the run done), not a limit of relay.toml."""
        return self.rule == DONE_FLAG


def decide_stop(chain: ChainConfig, data: LedgerData) -> StopDecision | None:
    """Return the rule that stops ``chain`` now, or None when it goes on."""
    stop = chain.stop
    handed = data.handoff.checkpoint if data.handoff else None
    if stop.done_flag and handed is not None and handed.done:
        return StopDecision(DONE_FLAG, f"the training script marked the run done at epoch {handed.epoch}")

    best = data.best.checkpoint if data.best else None
    value = best.metrics.get(chain.metric) if best is not None and chain.metric else None
    if value is not None and stop.target is not None and reached(value, stop.target, chain.mode):
        return StopDecision("target", f"{chain.metric} = {value:.4g} reached the target {stop.target:.4g}")

    if stop.no_progress_runs and no_progress_streak(data.runs) >= stop.no_progress_runs:
        return StopDecision(
            "no_progress_runs", f"no better {chain.metric or 'step'} in the last {stop.no_progress_runs} sessions"
        )

    days = sum(1 for run in data.runs if run.kernel_version is not None)
    if stop.max_days is not None and days >= stop.max_days:
        return StopDecision("max_days", f"max_days ({stop.max_days}) reached")
    return None


def stop_reason(chain: ChainConfig, data: LedgerData) -> str:
    """Return why ``chain`` must push no further session, or "" when it goes on."""
    decision = decide_stop(chain, data)
    return decision.reason if decision else ""


def reached(value: float, target: float, mode: str | None) -> bool:
    return value <= target if mode == "min" else value >= target


def better(value: float, than: float, mode: str | None) -> bool:
    return value < than if mode == "min" else value > than


def no_progress_streak(runs: list[Run]) -> int:
    """Count the latest sessions in a row that handed over no better checkpoint."""
    count = 0
    for run in reversed(runs):
        if run.outcome == PROGRESS:
            break
        if run.outcome == NO_PROGRESS:
            count += 1
    return count


def trailing_failures(runs: list[Run]) -> int:
    """Count the latest finished sessions in a row that left no newer valid checkpoint."""
    count = 0
    for run in reversed(runs):
        if run.outcome != NO_CHECKPOINT:
            break
        count += 1
    return count


def progress_outcome(chain: ChainConfig, earlier: list[Run], found: CheckpointInfo) -> str:
    """Classify a newer checkpoint: ``progress`` when its metric beats every earlier run's, else ``no_progress``.

    Without a metric, a newer checkpoint (a later step) is always progress.
    """
    value = found.metrics.get(chain.metric) if chain.metric else None
    if value is None or chain.metric is None:
        return PROGRESS
    previous = [
        run.checkpoint.metrics[chain.metric]
        for run in earlier
        if run.checkpoint is not None and chain.metric in run.checkpoint.metrics
    ]
    if not previous:
        return PROGRESS
    best = min(previous) if chain.mode == "min" else max(previous)
    return PROGRESS if better(value, best, chain.mode) else NO_PROGRESS
