"""Atomic save of a 1 GiB state against a plain ``torch.save`` of the same state.

Target: ``save_checkpoint`` within 1.2x of ``torch.save``. The atomic save
also hashes the bytes (in a second thread, while writing), fsyncs the file
and its folder, and writes the manifest. ``torch.save`` + fsync is printed
for reference, because plain ``torch.save`` leaves the data in the page cache.
"""

from __future__ import annotations

import os
import shutil

from bench.common import CACHE, Target, big_checkpoint, interleaved_medians, print_table


def main() -> list[Target]:
    import torch

    from kaggle_relay.runtime.save import save_checkpoint

    state = torch.load(big_checkpoint(), map_location="cpu", weights_only=True)
    folder = CACHE / "save"
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / "plain.pt"

    def torch_save_fsync() -> None:
        torch.save(state, folder / "plain-fsync.pt")
        descriptor = os.open(folder / "plain-fsync.pt", os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    try:
        medians = interleaved_medians(
            {
                "torch.save": lambda: torch.save(state, plain),
                "torch.save + fsync": torch_save_fsync,
                "save_checkpoint": lambda: save_checkpoint(
                    state, "atomic.pt", folder=folder, step=1
                ),
            },
            rounds=5,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    targets = [
        Target(
            "save_checkpoint / torch.save",
            medians["save_checkpoint"] / medians["torch.save"],
            at_most=1.2,
        )
    ]
    print_table("atomic save of a 1 GiB state", medians, targets)
    return targets


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
