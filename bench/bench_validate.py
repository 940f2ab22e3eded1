"""Validation of a 1 GiB torch checkpoint against a full torch.load and a bare zip directory read.

Targets: validation at least 100x faster than the full load, and within 3x
of reading the zip directory alone. The file has no manifest beside it, so
validation does not hash it (hashing reads every byte, by design).
"""

from __future__ import annotations

import zipfile

from bench.common import Target, big_checkpoint, interleaved_medians, print_table


def main() -> list[Target]:
    import torch

    from kaggle_relay.runtime.validate import validate_checkpoint

    path = big_checkpoint()
    candidate = validate_checkpoint(path)
    assert candidate.valid, candidate.reason

    def zip_directory() -> None:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()

    medians = interleaved_medians(
        {
            "full torch.load": lambda: torch.load(path, map_location="cpu", weights_only=True),
            "torch.load(mmap=True)": lambda: torch.load(path, map_location="cpu", weights_only=True, mmap=True),
            "zip directory read": zip_directory,
            "validate_checkpoint": lambda: validate_checkpoint(path),
        },
        rounds=5,
    )
    validate = medians["validate_checkpoint"]
    targets = [
        Target("full torch.load / validation", medians["full torch.load"] / validate, at_least=100),
        Target("validation / zip directory read", validate / medians["zip directory read"], at_most=3),
    ]
    print_table(f"validate a {path.stat().st_size / 2**30:.2f} GiB torch checkpoint", medians, targets)
    return targets


if __name__ == "__main__":
    main()
