"""A scan of a Kaggle-shaped tree with 20,000 files, 200 of them checkpoints, against a bare os.scandir walk.

Target: the scan (walk, pattern match, validation of the 200 checkpoints)
within 3x of a walk that only lists every folder.
"""

from __future__ import annotations

import io
import os
import shutil

from bench.common import CACHE, Target, interleaved_medians, print_table

FILES = 20_000
CHECKPOINTS = 200
FOLDERS = 100


def build_tree() -> str:
    """Write the tree under the benchmark cache: 100 folders of 200 files, 2 of them checkpoints."""
    import torch

    root = CACHE / "scan-tree"
    shutil.rmtree(root, ignore_errors=True)
    buffer = io.BytesIO()
    torch.save({"model": torch.nn.Linear(16, 4).state_dict(), "step": 1}, buffer)
    checkpoint = buffer.getvalue()
    per_folder = FILES // FOLDERS
    for index in range(FOLDERS):
        kind = "working/run" if index < FOLDERS // 2 else f"input/datasets/owner{index % 5}/data"
        folder = root / f"{kind}{index}"
        folder.mkdir(parents=True)
        for number in range(per_folder):
            is_checkpoint = number < CHECKPOINTS // FOLDERS
            name = f"ckpt-step{number}.pt" if is_checkpoint else f"sample{number}.png"
            (folder / name).write_bytes(checkpoint if is_checkpoint else b"\x89PNG")
    return str(root)


def bare_walk(folder: str) -> int:
    count = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                count += bare_walk(entry.path)
            else:
                count += 1
    return count


def main() -> list[Target]:
    from kaggle_relay.runtime.select import scan

    root = build_tree()
    assert bare_walk(root) == FILES
    result = scan([root])
    assert len(result.candidates) == CHECKPOINTS
    assert all(candidate.valid for candidate in result.candidates)

    medians = interleaved_medians({"bare os.scandir walk": lambda: bare_walk(root), "scan": lambda: scan([root])})
    targets = [Target("scan / bare walk", medians["scan"] / medians["bare os.scandir walk"], at_most=3)]
    print_table(f"scan {FILES} files with {CHECKPOINTS} checkpoints", medians, targets)
    shutil.rmtree(root, ignore_errors=True)
    return targets


if __name__ == "__main__":
    main()
