"""Helpers shared by the benchmarks: interleaved timing, the 1 GiB checkpoint, a table printer.

Timings on a shared machine swing 2 to 4 times between runs, so every
benchmark runs its baseline and its subject in the same process, interleaved
round by round, and compares medians.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
CACHE = Path(tempfile.gettempdir()) / "kaggle-relay-bench"
BIG_CHECKPOINT = CACHE / "big" / "checkpoint-1gib.pt"
# 256 float32 tensors of 1 MiB elements (4 MiB each): the shape of a mid-size model.
_TENSORS = 256
_ELEMENTS = GIB // 4 // _TENSORS


@dataclass
class Target:
    """A goal of one benchmark: ``ratio`` must be at least ``at_least`` or at most ``at_most``."""

    description: str
    ratio: float
    at_least: float | None = None
    at_most: float | None = None

    @property
    def passed(self) -> bool:
        if self.at_least is not None and self.ratio < self.at_least:
            return False
        return not (self.at_most is not None and self.ratio > self.at_most)


def interleaved_medians(subjects: dict[str, Callable[[], object]], *, rounds: int = 7, warmup: int = 1) -> dict[str, float]:
    """Time each callable once per round, in turn, and return the median seconds of each."""
    timings: dict[str, list[float]] = {name: [] for name in subjects}
    for round_number in range(warmup + rounds):
        for name, call in subjects.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_number >= warmup:
                timings[name].append(elapsed)
    return {name: statistics.median(values) for name, values in timings.items()}


def big_checkpoint() -> Path:
    """Return a 1 GiB torch checkpoint, building it once under the system temp folder."""
    if BIG_CHECKPOINT.exists() and BIG_CHECKPOINT.stat().st_size >= GIB:
        return BIG_CHECKPOINT
    import torch

    BIG_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    state = {f"layers.{index}.weight": torch.zeros(_ELEMENTS) for index in range(_TENSORS)}
    staging = BIG_CHECKPOINT.with_suffix(".partial")
    torch.save({"model": state, "epoch": 3, "step": 3000, "metrics": {"val_loss": 0.25}}, staging)
    staging.replace(BIG_CHECKPOINT)
    return BIG_CHECKPOINT


def remove_cache() -> None:
    """Delete the 1 GiB checkpoint and every other file the benchmarks left in the cache."""
    shutil.rmtree(CACHE, ignore_errors=True)


def format_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def print_table(title: str, medians: dict[str, float], targets: Sequence[Target]) -> None:
    """Print the medians, then each target with its ratio and PASS or MISS."""
    width = max(len(name) for name in medians)
    print(f"\n== {title}")
    for name, seconds in medians.items():
        print(f"  {name.ljust(width)}  {format_ms(seconds):>12}")
    for target in targets:
        if target.at_least is None and target.at_most is None:
            print(f"  info  {target.description}: {target.ratio:.2f}x")
            continue
        bound = f">= {target.at_least:g}x" if target.at_least is not None else f"<= {target.at_most:g}x"
        verdict = "PASS" if target.passed else "MISS"
        print(f"  {verdict}  {target.description}: {target.ratio:.2f}x (target {bound})")
