"""Retention after a killed save: cut and empty files never take the place of a valid checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import ReadOnlyLocationError
from kaggle_relay.runtime.prune import prune_checkpoints
from kaggle_relay.runtime.save import save_checkpoint


def _state(step: int) -> dict[str, object]:
    return {"model": {"w": torch.full((64,), float(step))}, "step": step}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _killed_run(folder: Path, valid: list[int], cut: int, empty: int) -> None:
    for step in valid + [cut]:
        save_checkpoint(_state(step), f"ckpt-step{step}.pt", folder=folder, step=step)
    data = (folder / f"ckpt-step{cut}.pt").read_bytes()
    (folder / f"ckpt-step{cut}.pt").write_bytes(data[: len(data) // 2])
    (folder / f"ckpt-step{empty}.pt").write_bytes(b"")


@pytest.mark.parametrize("keep", [1, 2])
def test_corrupt_newest_files_never_evict_valid_ones(kaggle_root: Path, keep: int) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    _killed_run(folder, valid=[5, 10], cut=20, empty=30)

    decisions = {decision.file: decision for decision in prune_checkpoints(folder, keep=keep)}

    names = sorted(path.name for path in folder.glob("ckpt-*.pt"))
    expected_valid = ["ckpt-step10.pt"] if keep == 1 else ["ckpt-step10.pt", "ckpt-step5.pt"]
    assert [name for name in names if name in ("ckpt-step5.pt", "ckpt-step10.pt")] == expected_valid
    assert decisions["ckpt-step10.pt"].keep
    assert (folder / "ckpt-step10.pt").stat().st_size > 0


def test_corrupt_files_outside_manifest_never_evict_valid_ones(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_checkpoint(_state(10), "ckpt-step10.pt", folder=folder, step=10)
    # A process killed mid-write by something other than our atomic save: files the manifest never saw.
    torch.save(_state(20), folder / "ckpt-step20.pt")
    data = (folder / "ckpt-step20.pt").read_bytes()
    (folder / "ckpt-step20.pt").write_bytes(data[: len(data) // 3])
    (folder / "ckpt-step30.pt").write_bytes(b"")

    prune_checkpoints(folder, keep=1, pattern="ckpt-step*.pt")

    assert (folder / "ckpt-step10.pt").exists()
    assert (folder / "ckpt-step10.pt").stat().st_size > 0


def test_prune_of_input_copy_deletes_nothing(kaggle_root: Path) -> None:
    dataset = kaggle_root / "input" / "datasets" / "alice" / "relay-handoff"
    dataset.mkdir(parents=True)
    for step in (10, 20, 30):
        torch.save(_state(step), dataset / f"ckpt-step{step}.pt")
    (dataset / "ckpt-step40.pt").write_bytes(b"")
    before = _snapshot(kaggle_root / "input")

    with pytest.raises(ReadOnlyLocationError):
        prune_checkpoints(dataset, keep=1)
    with pytest.raises(ReadOnlyLocationError):
        save_checkpoint(_state(50), "ckpt-step50.pt", folder=dataset, step=50, keep=1)

    assert _snapshot(kaggle_root / "input") == before
