"""Tests of compact export: no training state, half precision, never written into the source file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import ConfigError
from kaggle_relay.runtime.compact import compact_state, export_compact
from kaggle_relay.runtime.manifest import load_manifest
from kaggle_relay.runtime.save import save_checkpoint


def full_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": 3},
        "epoch": 3,
    }


@pytest.mark.parametrize(
    ("name", "dtype"), [(True, torch.float16), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_compact_state_casts_floats_by_name(name: bool | str, dtype: torch.dtype) -> None:
    state = full_state()
    compact = compact_state(state, dtype=name)
    assert set(compact) == {"model", "epoch"}
    assert compact["model"]["0.weight"].dtype == dtype
    assert compact["model"]["1.num_batches_tracked"].dtype == torch.int64
    assert state["model"]["0.weight"].dtype == torch.float32
    assert "optimizer" in state


def test_compact_state_keeps_state_dict_metadata() -> None:
    state = full_state()
    compact = compact_state(state)
    assert compact["model"]._metadata == state["model"]._metadata


def test_compact_state_rejects_unknown_dtype() -> None:
    with pytest.raises(ConfigError, match="fp8"):
        compact_state({}, dtype="fp8")


def test_compact_over_mmapped_source_keeps_mapping_valid(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_checkpoint(
        full_state(), "ckpt.pt", epoch=3, step=300, metrics={"val_loss": 0.2}, run_id="run-x"
    )
    source = folder / "ckpt.pt"
    inode_before = source.stat().st_ino
    mapped = torch.load(source, mmap=True, weights_only=True)
    expected = mapped["model"]["0.weight"].clone()

    entry = export_compact(source, source)

    assert source.stat().st_ino != inode_before
    assert torch.equal(mapped["model"]["0.weight"], expected)
    reloaded = torch.load(source, weights_only=True)
    assert "optimizer" not in reloaded
    assert reloaded["model"]["0.weight"].dtype == torch.float16
    assert torch.allclose(reloaded["model"]["0.weight"].float(), expected, atol=1e-3)
    assert (entry.epoch, entry.step, entry.metrics, entry.run_id, entry.compact) == (
        3,
        300,
        {"val_loss": 0.2},
        "run-x",
        True,
    )
    manifest = load_manifest(folder)
    assert manifest is not None
    assert [item.file for item in manifest.files] == ["ckpt.pt"]
    assert manifest.files[0].bytes == source.stat().st_size


def test_compact_from_legacy_file_writes_zip(kaggle_root: Path) -> None:
    dataset = kaggle_root / "input" / "old-weights"
    dataset.mkdir()
    torch.save(full_state(), dataset / "model.pth", _use_new_zipfile_serialization=False)

    entry = export_compact(dataset / "model.pth", dtype="bf16")

    target = kaggle_root / "working" / "checkpoints" / "model-bf16.pt"
    assert entry.file == "model-bf16.pt"
    assert entry.format == "torch-zip"
    assert target.read_bytes()[:4] == b"PK\x03\x04"
    assert torch.load(target, weights_only=True)["model"]["0.weight"].dtype == torch.bfloat16
    assert entry.epoch == 3


def test_compact_safetensors_for_plain_state_dict(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_checkpoint(full_state(), "ckpt.pt", step=7)
    entry = export_compact(folder / "ckpt.pt", format="safetensors")

    from safetensors.torch import load_file

    tensors = load_file(folder / "ckpt-fp16.safetensors")
    assert entry.format == "safetensors"
    assert entry.step == 7
    assert tensors["0.weight"].dtype == torch.float16
    assert "1.num_batches_tracked" in tensors


def test_compact_safetensors_rejects_nested_state(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_checkpoint({"nested": {"a": {"b": torch.ones(1)}}}, "odd.pt")
    with pytest.raises(ConfigError, match="flat"):
        export_compact(folder / "odd.pt", format="safetensors")
