"""Turnaround of one chain, from a version reaching ``complete`` to the next version pushed.

This is the tick that moves a day's checkpoint to the next session:
status poll, download of the outputs, validation, staging, upload as a
dataset version, wait for READY, file-list check and push. It is timed as a
real `kaggle-relay next-day` subprocess against an emulator in another
process with a dataset processing delay of 0. The kernel saves one
checkpoint of 256 MiB with the runtime (manifest included) and ends: a
small model by today's measure, but large enough that moving the bytes is
a visible share of the tick.

The child times the functions inside harvest and publish as well
(``chainbench.TIMED_FUNCTIONS``), so the table shows where the time goes.
The chain-level steps come from the ``timings`` of next-day's own JSON.

Baseline: a plain streaming GET of the same output file plus a plain
streaming PUT of the same bytes to the emulator's upload URL, with no
hashing or checks, run just before each timed tick. Target: the median over
the repetitions of turnaround / (GET + PUT) at most 4. Besides the two
transfers, the tick pays about 0.8 s that do not depend on the checkpoint's
size on this machine: interpreter start and exit, imports, connecting, the
ledger's fsynced writes and the push. So the ratio nears 1 only for
checkpoints of several GiB.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import requests

from bench.chainbench import (
    USER,
    EmulatorProcess,
    emulator,
    next_day,
    states,
    timed_next_day,
    write_chains,
)
from bench.common import Target

MEBIBYTES = 256
REPETITIONS = 3
KERNEL = f'''"""A benchmark kernel: save one checkpoint of {MEBIBYTES} MiB with the runtime, then end."""
import torch

from kaggle_relay.runtime import start_session

session = start_session(patterns=["ckpt-*.pt"], require_keys=["model"])
if session.checkpoint is None:
    # 1 MiB float32 tensors, like the layers of a mid-size model.
    model = {{f"layers.{{index}}.weight": torch.rand(1 << 18) for index in range({MEBIBYTES})}}
    session.save({{"model": model}}, "ckpt-0000.pt", epoch=0, step=1, metrics={{"val_acc": 0.5}})
session.finish(done=False)
'''
CHAIN_SETTINGS = 'patterns = ["ckpt-*.pt"]\nrequire_keys = ["model"]\n'
_CHUNK = 1 << 20


def plain_transfer(server: EmulatorProcess, slug: str, scratch: Path) -> float:
    """GET the version's checkpoint output to ``scratch`` and PUT it back as a blob; return the seconds taken."""
    listing = server.rpc("ListKernelSessionOutput", {"userName": USER, "kernelSlug": slug})
    url = next(item["url"] for item in listing["files"] if item["fileName"].endswith(".pt"))
    start = time.perf_counter()
    with requests.get(url, stream=True, timeout=60) as response, scratch.open("wb") as handle:
        response.raise_for_status()
        for chunk in response.iter_content(_CHUNK):
            handle.write(chunk)
    size = scratch.stat().st_size
    upload = server.rpc("StartBlobUpload", {"type": "DATASET", "name": scratch.name, "contentLength": size})
    with scratch.open("rb") as handle:
        requests.put(upload["createUrl"], data=handle, headers={"Content-Length": str(size)}, timeout=60).raise_for_status()
    return time.perf_counter() - start


def one_turnaround(server: EmulatorProcess, root: Path, index: int) -> dict[str, float]:
    """Push a new chain, wait for its version to complete, then time the tick that hands over and pushes."""
    name = f"turn{index}"
    config = write_chains(root / name, [name], KERNEL, extra=CHAIN_SETTINGS)
    first = next_day(config, server.env)
    if states(first) != {"running": 1}:
        raise RuntimeError(f"the first push returned {first}")
    if server.wait_for_kernel(name) != "COMPLETE":
        raise RuntimeError(f"version 1 of {name} did not complete; see {server.folder}")

    plain = plain_transfer(server, name, root / f"{name}-plain.pt")
    total, document, inner = timed_next_day(config, server.env, root / f"{name}-seconds.json")
    chain = document["chains"][0]
    if chain["state"] != "running" or not any("pushed" in message for message in chain["messages"]):
        raise RuntimeError(f"the timed tick did not push the next version: {document}")
    # Let version 2 end before the next repetition, so that its session does not compete for the CPU.
    server.wait_for_kernel(name)
    return split(total, chain["timings"], inner) | {"plain GET + PUT": plain}


def split(total: float, steps: dict[str, float], inner: dict[str, float]) -> dict[str, float]:
    """Break the tick into rows that add up to ``total``: chain steps, with harvest and publish split further."""
    harvest = ("harvest download", "validate (harvest)")
    publish = ("validate (publish)", "stage", "upload and create version", "wait READY", "listing check")
    rows = {"turnaround (whole tick)": total}
    rows["interpreter start and exit"] = inner["interpreter start"] + inner["exit"]
    rows["imports"] = inner["imports"]
    # Dotted names ("harvest.download") are parts of a step, already inside its own time.
    top_level = sum(seconds for name, seconds in steps.items() if "." not in name)
    rows["connect (kaggle client import), ledger"] = inner["main"] - top_level
    rows["poll (2 status calls)"] = steps.get("poll", 0.0)
    rows |= {label: inner.get(label, 0.0) for label in harvest}
    rows["harvest, other"] = steps.get("harvest", 0.0) - sum(inner.get(label, 0.0) for label in harvest)
    rows |= {label: inner.get(label, 0.0) for label in publish}
    rows["publish, other (version lookups)"] = steps.get("publish", 0.0) - sum(inner.get(label, 0.0) for label in publish)
    rows["push (bundle and SaveKernel)"] = steps.get("push", 0.0)
    return rows


def print_rows(medians: dict[str, float], targets: list[Target]) -> None:
    total = medians["turnaround (whole tick)"]
    width = max(len(name) for name in medians)
    print(f"\n== turnaround from complete to the next push, {MEBIBYTES} MiB checkpoint (median of {REPETITIONS})")
    print("  (each row is its own median, so the rows add up to the total only within one repetition)")
    for name, seconds in medians.items():
        share = "" if name in ("turnaround (whole tick)", "plain GET + PUT") else f"{100 * seconds / total:6.1f} %"
        print(f"  {name.ljust(width)}  {seconds * 1000:10.1f} ms  {share}")
    for target in targets:
        verdict = "PASS" if target.passed else "MISS"
        print(f"  {verdict}  {target.description}: {target.ratio:.2f}x (target <= {target.at_most:g}x)")


def main() -> list[Target]:
    with tempfile.TemporaryDirectory(prefix="kaggle-relay-bench-turnaround-") as folder:
        root = Path(folder)
        with emulator(root / "server", processing_delay=0.0) as server:
            runs = [one_turnaround(server, root, index) for index in range(REPETITIONS)]
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    # The ratio of each repetition, then their median: the machine's load shifts both sides of one repetition alike.
    ratio = statistics.median(run["turnaround (whole tick)"] / run["plain GET + PUT"] for run in runs)
    targets = [Target(f"turnaround / plain GET + PUT of the same {MEBIBYTES} MiB", ratio, at_most=4)]
    print_rows(medians, targets)
    return targets


if __name__ == "__main__":
    main()
