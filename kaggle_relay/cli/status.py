"""``kaggle-relay status``: what each chain did, from the ledgers alone.

It reads relay.toml (for the chain names) and the ledgers in ``.relay/``
beside it, and nothing else: no Kaggle call, no credentials, no torch, no
``kaggle`` import, so it works anywhere the project folder is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from kaggle_relay.cli import exitcodes
from kaggle_relay.relay.config import load_config
from kaggle_relay.relay.ledger import Ledger, list_chains
from kaggle_relay.relay.quota import parse_time

HELP = f"""Show each chain of the project: state, days run, kernel and handoff dataset
versions, the last checkpoint handed over (epoch, metrics), the best checkpoint
by the chain's metric, how the current session ended and its time against the
limit, and the last error with what to do.
Reads only relay.toml and the ledgers in .relay/; needs no credentials.

{exitcodes.HELP}"""

NEXT_STEP = {
    "idle": "the next `kaggle-relay next-day` pushes a new session",
    "running": "a session is running; `kaggle-relay next-day` polls it",
    "publishing": "the last checkpoint is being published; run `kaggle-relay next-day`",
    "waiting": "the handoff dataset is processing; run `kaggle-relay next-day`",
    "done": "finished; the last checkpoint is in the handoff dataset",
    "stopped": "the last checkpoint is in the handoff dataset; to train on, change that rule in relay.toml "
    "([chain.stop]), then run `kaggle-relay next-day --retry`",
    "failed": "stopped; fix the error below, then run `kaggle-relay next-day --retry`",
}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show each chain's progress and last error (no credentials needed)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=Path("relay.toml"), help="relay.toml (default: %(default)s)")
    parser.add_argument("--chain", help="show only this chain")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def chain_status(ledger: Ledger, *, now: dt.datetime) -> dict[str, Any]:
    """Summarise one ledger as the JSON object ``status --json`` prints per chain."""
    data = ledger.data
    current = ledger.current
    handoff = data.handoff
    checkpoint = handoff.checkpoint if handoff else None
    # A stop rule of relay.toml (not the training script's done flag) ended the chain before training finished.
    by_rule = data.state == "done" and data.stopped is not None and data.stopped.rule != "done_flag"
    return {
        "name": data.chain,
        "state": data.state,
        "stopped_by": data.stopped.rule if data.stopped and data.state == "done" else None,
        "stop_reason": data.stopped.reason if data.stopped and data.state == "done" else None,
        "days": ledger.days,
        "kernel_version": current.kernel_version if current else None,
        "dataset_version": handoff.version if handoff else None,
        "last_checkpoint": checkpoint.model_dump() if checkpoint else None,
        "metric": data.best.metric if data.best else None,
        "best": data.best.model_dump() if data.best else None,
        "session": _session(current, now=now) if current else None,
        "error": data.error.model_dump() if data.error else None,
        "warnings": [warning.model_dump() for warning in data.warnings[-3:]],
        "next": NEXT_STEP["stopped" if by_rule else data.state],
        "updated": data.updated,
    }


def _session(run: Any, *, now: dt.datetime) -> dict[str, Any]:
    if run.finished_at:
        used = run.seconds
    elif run.pushed_at:
        used = max(0.0, (now - parse_time(run.pushed_at)).total_seconds())
    else:
        used = 0.0
    return {
        "run_id": run.run_id,
        "status": run.status or "not pushed",
        "ended_by": run.ended_by,
        "partial": run.partial,
        "seconds_used": round(used, 1),
        "limit_seconds": run.session_limit,
    }


def collect(state_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.timezone.utc)
    return [chain_status(Ledger.open(state_dir, name), now=now) for name in names]


def format_chain(item: dict[str, Any]) -> str:
    rule = item["stopped_by"]
    stopped = f" (stopped by {rule})" if rule and rule != "done_flag" else ""
    lines = [f"{item['name']}: {item['state']}{stopped}, day {item['days']}"]
    if stopped:
        lines.append(f"  stopped by the {rule} rule before the training script marked the run done: "
                     f"{item['stop_reason']}")
    elif rule:
        lines.append(f"  {item['stop_reason']}")
    if item["kernel_version"] is not None:
        lines.append(f"  kernel version {item['kernel_version']}")
    if item["dataset_version"] is not None:
        lines.append(f"  handoff dataset version {item['dataset_version']}")
    checkpoint = item["last_checkpoint"]
    if checkpoint:
        metrics = ", ".join(f"{key}={value:.4g}" for key, value in checkpoint["metrics"].items())
        lines.append(f"  last checkpoint {checkpoint['file']} (epoch {checkpoint['epoch']}{', ' + metrics if metrics else ''})")
    best = item["best"]
    if best:
        lines.append(f"  {_best_line(best)}")
    session = item["session"]
    if session and session["limit_seconds"]:
        lines.append(
            f"  session {session['run_id']}: {session['status']}{_ending(session)}, "
            f"{session['seconds_used']:.0f} s of {session['limit_seconds']} s limit"
        )
    for warning in item["warnings"]:
        lines.append(f"  warning: {warning['message']}")
    if item["error"]:
        lines.append(f"  error: {item['error']['message']}")
        if item["error"]["hint"]:
            lines.append(f"  fix: {item['error']['hint']}")
    lines.append(f"  next: {item['next']}")
    return "\n".join(lines)


ENDINGS = {
    "time_limit": "stopped at the session time limit",
    "error": "ended with an error",
    "cancelled": "cancelled",
}


def _ending(session: dict[str, Any]) -> str:
    ending = ENDINGS.get(session["ended_by"], "")
    if session["partial"]:
        ending = f"{ending or session['ended_by']}, partial: its last valid checkpoint was handed over"
    return f" ({ending})" if ending else ""


def _best_line(best: dict[str, Any]) -> str:
    checkpoint = best["checkpoint"]
    value = checkpoint["metrics"].get(best["metric"])
    where = (
        f"in handoff dataset version {best['dataset_version']}"
        if best["dataset_version"] is not None
        else f"kept in .relay/{best['path']}"
    )
    formatted = f"{value:.4g}" if value is not None else "unknown"
    return f"best {best['metric']} ({best['mode']}) = {formatted} at epoch {checkpoint['epoch']}, {where}"


def run(args: argparse.Namespace) -> int:
    # relay.toml names the chains: an invalid file fails as in next-day, an unknown --chain lists the known ones.
    config = load_config(args.config)
    names = [chain.name for chain in config.select(args.chain)]
    chains = collect(config.state_dir, names)
    if args.json:
        print(json.dumps({"chains": chains}, indent=2))
        return exitcodes.OK
    if not list_chains(config.state_dir):
        print(f"no chain has run yet (no ledger in {config.state_dir}); start one with `kaggle-relay next-day`")
    print("\n\n".join(format_chain(item) for item in chains))
    return exitcodes.OK
