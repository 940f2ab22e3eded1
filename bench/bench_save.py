"""Atomic save of a 1 GiB state against a plain ``torch.save`` of the same state.

Target: ``save_checkpoint`` within 1.2x of plain ``torch.save``. Plain
``torch.save`` returns with the data still in the page cache, so the table
also shows ``torch.save`` followed by fsync, the cheapest durable save, as a
second baseline. ``save_checkpoint`` also computes the sha256 (about 0.5 s of
CPU per GiB with SHA instructions), fsyncs the folder and writes the manifest.

Before each timed call the benchmark deletes the previous outputs and runs
``os.sync()``, untimed. Otherwise each subject pays for the write-back and
the block freeing left by the subject before it (file systems mounted with
``discard`` also discard the freed blocks). In an early run, whichever
subject ran after ``torch.save`` was up to 1 s slower. The order of the subjects rotates
each round. The hash runs in a second thread, so the ratio depends on a
free CPU core: the output shows the load average and the CPU time of each
subject.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import CACHE, Target, big_checkpoint, interleaved_medians, print_table

ROUNDS = 7


def fsync_file(path: os.PathLike[str]) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def settle(folder: Path) -> None:
    """Delete the previous outputs and flush every dirty page, so no subject pays for another."""
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()
    os.sync()


def time_rotated(
    subjects: dict[str, Callable[[], object]], folder: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Run one warm-up round and ``ROUNDS`` timed rounds; return median wall and CPU seconds.

    Each round starts the order one subject later than the round before.
    """
    names = list(subjects)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(ROUNDS + 1):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            settle(folder)
            start = time.process_time()
            seconds = interleaved_medians({name: subjects[name]}, rounds=1, warmup=0)[name]
            if round_number > 0:
                wall[name].append(seconds)
                cpu[name].append(time.process_time() - start)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def main() -> list[Target]:
    import torch

    from kaggle_relay.runtime.save import save_checkpoint

    state = torch.load(big_checkpoint(), map_location="cpu", weights_only=True)
    folder = CACHE / "save"
    folder.mkdir(parents=True, exist_ok=True)

    def torch_save_fsync() -> None:
        torch.save(state, folder / "plain-fsync.pt")
        fsync_file(folder / "plain-fsync.pt")

    subjects: dict[str, Callable[[], object]] = {
        "torch.save": lambda: torch.save(state, folder / "plain.pt"),
        "torch.save + fsync": torch_save_fsync,
        "save_checkpoint": lambda: save_checkpoint(state, "atomic.pt", folder=folder, step=1),
    }
    try:
        medians, cpu = time_rotated(subjects, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    ratio = medians["save_checkpoint"] / medians["torch.save"]
    durable_ratio = medians["save_checkpoint"] / medians["torch.save + fsync"]
    targets = [Target("save_checkpoint / torch.save", ratio, at_most=1.2)]
    print_table(f"atomic save of a 1 GiB state ({ROUNDS} rounds, medians)", medians, targets)
    print(f"  info  save_checkpoint / (torch.save + fsync): {durable_ratio:.2f}x (no target)")
    cpu_medians = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in cpu.items())
    print(f"  info  CPU time of this process (median): {cpu_medians}")
    print(f"  info  1-minute load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return targets


if __name__ == "__main__":
    # Run from the repository root as ``python -m bench.bench_save``.
    from bench.common import BIG_CHECKPOINT

    built_here = not BIG_CHECKPOINT.exists()
    try:
        main()
    finally:
        # Delete the 1 GiB input only if this run built it: another benchmark may be using it.
        if built_here:
            BIG_CHECKPOINT.unlink(missing_ok=True)
