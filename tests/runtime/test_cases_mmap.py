"""Saving over a file whose tensors are still memory-mapped keeps both the old tensors and the new file intact."""

from __future__ import annotations

from pathlib import Path

import torch

from kaggle_relay.runtime.load import load_checkpoint
from kaggle_relay.runtime.manifest import load_manifest, sha256_file
from kaggle_relay.runtime.save import save_checkpoint


def test_save_over_mapped_source_with_same_name(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    weights = torch.arange(50_000, dtype=torch.float32)
    save_checkpoint({"model": {"w": weights}, "optimizer": {"m": torch.ones(50_000)}}, "ckpt.pt", step=7)
    source = folder / "ckpt.pt"
    inode = source.stat().st_ino

    mapped = load_checkpoint(source, mmap=True)
    compact = {"model": {"w": mapped["model"]["w"].half()}}
    del mapped["optimizer"]
    save_checkpoint(compact, "ckpt.pt", step=7)
    # The model tensor still points into the old file, which the rename left alive.
    save_checkpoint({"model": {"w": mapped["model"]["w"]}}, "ckpt-full.pt", step=7)

    assert source.stat().st_ino != inode
    assert torch.equal(mapped["model"]["w"], weights)
    reloaded = torch.load(source, weights_only=True)
    assert set(reloaded) == {"model"}
    assert torch.equal(reloaded["model"]["w"].float(), weights.half().float())
    assert torch.equal(torch.load(folder / "ckpt-full.pt", weights_only=True)["model"]["w"], weights)
    manifest = load_manifest(folder)
    assert manifest is not None
    entry = manifest.entry("ckpt.pt")
    assert entry is not None
    assert entry.sha256 == sha256_file(source)
    assert entry.step == 7
