"""A `kaggle-relay next-day` tick on chains whose versions are still running, against `python -c pass`.

Cron runs ``next-day`` every hour or so, and most ticks find every version
still running. Such a tick must cost little: one status request per chain,
no listing of every kernel or dataset, and no torch import (about 3 s on
this machine). Each subject is a real subprocess of the installed entry
point against an emulator in another process, with 1, 10 and 50 chains in
one relay.toml, timed interleaved with ``python -c pass``.

Targets:

- 1-chain tick / ``python -c pass`` at most 60x. The tick's floor is
  importing pydantic, requests, kagglesdk and the kaggle client, then
  tearing the interpreter down (the "import only" row, about 20x on this
  machine). On top come one authenticated status request, the ledger, its
  lock and the log file. 60x leaves room for a slower disk or a busier
  machine, and an import of torch (over 100x on its own) still fails it.
- 50-chain tick / (50 x 1-chain tick) at most 1: the per-process start-up
  is paid once, so 50 chains must cost less than 50 separate ticks.

The requests per chain are counted from the emulator's request log and
printed. A tick that sends more than one request per running chain raises.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.chainbench import EmulatorProcess, emulator, next_day, states, write_chains
from bench.common import Target, format_ms, interleaved_medians, print_table

SLEEPER = "import time\n\ntime.sleep(600)\n"
SIZES = (1, 10, 50)
# Everything the tick imports before it sends a request, without torch: the floor of a tick.
_IMPORT_ONLY = (
    "import kaggle_relay.cli.main, kaggle_relay.cli.nextday, kaggle_relay.relay.chain, "
    "kaggle_relay.relay.kernels, kaggle_relay.relay.endpoint as e; e.load_kaggle_api_class()"
)


def push_all(server: EmulatorProcess, root: Path) -> dict[int, Path]:
    """Write one project per size, push every chain once and check that each is running."""
    configs = {}
    for size in SIZES:
        names = [f"tick{size}-chain{index:02d}" for index in range(size)]
        config = write_chains(root / f"chains-{size}", names, SLEEPER)
        document = next_day(config, server.env)
        if states(document) != {"running": size}:
            raise RuntimeError(f"after the first push of {size} chain(s): {document}")
        configs[size] = config
    return configs


def count_requests(server: EmulatorProcess, config: Path, size: int) -> list[str]:
    """Run one tick and return the request paths the emulator received during it."""
    before = len(server.requests())
    document = next_day(config, server.env)
    if states(document) != {"running": size}:
        raise RuntimeError(f"a tick on {size} running chain(s) returned {document}")
    sent = server.requests()[before:]
    if len(sent) > size:
        raise RuntimeError(f"a tick on {size} running chain(s) sent {len(sent)} requests: {sent}")
    return sent


def check_no_torch(server: EmulatorProcess, config: Path) -> bool:
    """Run one tick in a child with ``-X importtime``; return whether torch was imported."""
    command = [sys.executable, "-X", "importtime", "-m", "kaggle_relay.cli.main", "next-day", "--config", str(config),
               "--json"]
    result = subprocess.run(command, env=server.env, capture_output=True, text=True, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    return any(name == "torch" or name.startswith("torch.") for name in imported)


def main() -> list[Target]:
    with tempfile.TemporaryDirectory(prefix="kaggle-relay-bench-tick-") as folder, emulator(Path(folder)) as server:
        configs = push_all(server, Path(folder))
        sent = {size: count_requests(server, configs[size], size) for size in SIZES}
        if check_no_torch(server, configs[1]):
            raise RuntimeError("a next-day tick on a running chain imported torch")

        python = sys.executable
        subjects = {
            "python -c pass": lambda: subprocess.run([python, "-c", "pass"], check=True),
            "import only (no request)": lambda: subprocess.run([python, "-c", _IMPORT_ONLY], check=True),
        }
        for size in SIZES:
            subjects[f"tick, {size} chain(s)"] = lambda size=size: next_day(configs[size], server.env)
        medians = interleaved_medians(subjects, rounds=5)

    one, fifty = medians["tick, 1 chain(s)"], medians["tick, 50 chain(s)"]
    slope = (fifty - one) / (SIZES[-1] - 1)
    targets = [
        Target("1-chain tick / python -c pass", one / medians["python -c pass"], at_most=60),
        Target("50-chain tick / (50 x 1-chain tick)", fifty / (50 * one), at_most=1),
    ]
    print_table("next-day tick on running chains (installed entry point, emulator in another process)", medians, targets)
    print(f"  slope per added chain (1 to 50 chains): {format_ms(slope)}")
    for size in SIZES:
        print(f"  requests in one tick of {size} chain(s): {len(sent[size])} ({', '.join(sorted(set(sent[size])))})")
    print("  torch imported by the tick: no")
    return targets


if __name__ == "__main__":
    main()
