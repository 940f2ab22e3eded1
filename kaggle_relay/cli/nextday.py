"""``kaggle-relay next-day``: advance every chain of relay.toml as far as it can, then exit."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kaggle_relay.cli import exitcodes
from kaggle_relay.errors import (
    ChainLockedError,
    CredentialsError,
    KaggleUnavailableError,
    KernelRunError,
    RelayError,
)

HELP = f"""Advance each chain: push the next session with the handoff dataset pinned,
poll a running one, harvest a finished one, validate and publish its
checkpoint, wait (bounded) for the dataset version to be READY, and push
again. Without --wait it never blocks for hours, so cron can run it every
hour; a chain another process is advancing is skipped. Progress goes to
stderr and to .relay/<chain>.log; the result goes to stdout. With --json,
each chain's "timings" gives the seconds this run spent in each step
(push, poll, harvest, publish, ready); harvest.download and
harvest.validate are the parts of harvest.

{exitcodes.HELP}"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "next-day",
        help="advance every chain as far as it can (what cron runs)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=Path("relay.toml"), help="relay.toml (default: %(default)s)")
    parser.add_argument("--chain", help="advance only this chain")
    parser.add_argument("--wait", action="store_true", help="keep going until every chain is done or blocked")
    parser.add_argument("--retry", action="store_true", help="put failed chains back to idle before advancing")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def advance_all(config_path: Path, only: str | None, *, wait: bool, retry: bool) -> list[dict[str, Any]]:
    """Advance the selected chains; return one result per chain (errors included, not raised)."""
    from kaggle_relay.relay import chain as chains
    from kaggle_relay.relay.config import load_config

    config = load_config(config_path)
    results = []
    for chain in config.select(only):
        if retry:
            chains.retry_failed(chain)
        results.append(_advance_one(chains, chain, config, wait=wait))
    return results


def _advance_one(chains: Any, chain: Any, config: Any, *, wait: bool) -> dict[str, Any]:
    try:
        outcome = chains.advance(chain, wait=wait, quota=config.quota)
    except ChainLockedError as error:
        return {"name": chain.name, "state": "locked", "code": exitcodes.IN_PROGRESS, "message": str(error)}
    except CredentialsError:
        # The same for every chain: one clear error and exit code 5 from the dispatcher.
        raise
    except KernelRunError as error:
        # Another version of the kernel (not this chain's) is queued or running: it ends by itself, so
        # the next tick can push. Nothing was pushed and the ledger is unchanged.
        return {"name": chain.name, "state": "busy", "code": exitcodes.IN_PROGRESS, "message": str(error),
                "hint": "wait for that version to finish (or stop it on Kaggle); the next tick pushes"}
    except KaggleUnavailableError as error:
        return {"name": chain.name, "state": "unavailable", "code": exitcodes.KAGGLE_UNAVAILABLE,
                "message": str(error), "hint": error.hint}
    except RelayError as error:
        _record_error(chain, error)
        return {"name": chain.name, "state": "failed", "code": exitcodes.NEEDS_ATTENTION,
                "message": str(error), "hint": error.hint}
    if outcome.state == "done":
        code = exitcodes.OK
    elif outcome.needs_attention:
        code = exitcodes.NEEDS_ATTENTION
    else:
        code = exitcodes.IN_PROGRESS
    timings = {step: round(seconds, 3) for step, seconds in outcome.timings.items()}
    return {"name": chain.name, "state": outcome.state, "code": code, "blocked": outcome.blocked,
            "messages": outcome.messages, "timings": timings}


def _record_error(chain: Any, error: RelayError) -> None:
    """Keep the error in the ledger so `status` shows it; the chain's state is left as it was.

    The next tick runs the same step again, which clears the error once it succeeds.
    """
    from kaggle_relay.relay.ledger import Ledger, Problem, chain_lock
    from kaggle_relay.runtime.manifest import utc_now

    state_dir = chain.project_dir / ".relay"
    try:
        with chain_lock(state_dir, chain.name):
            ledger = Ledger.open(state_dir, chain.name)
            if ledger.state != "failed":
                ledger.data.error = Problem(time=utc_now(), message=str(error), hint=error.hint)
                ledger.save()
    except RelayError:
        pass


def overall_code(results: list[dict[str, Any]]) -> int:
    """Return OK when every chain is done, NEEDS_ATTENTION when any needs a person, else the worst other code."""
    codes = [item["code"] for item in results]
    if all(code == exitcodes.OK for code in codes):
        return exitcodes.OK
    for code in (exitcodes.NEEDS_ATTENTION, exitcodes.KAGGLE_UNAVAILABLE):
        if code in codes:
            return code
    return exitcodes.IN_PROGRESS


def run(args: argparse.Namespace) -> int:
    results = advance_all(args.config, args.chain, wait=args.wait, retry=args.retry)
    code = overall_code(results)
    if args.json:
        print(json.dumps({"chains": results, "code": code}))
        return code
    for item in results:
        print(f"{item['name']}: {item['state']}")
        for message in item.get("messages", []):
            print(f"  {message}")
        for key in ("blocked", "message"):
            if item.get(key):
                print(f"  {item[key]}")
        if item.get("hint"):
            print(f"  fix: {item['hint']}")
    sys.stdout.flush()
    return code
