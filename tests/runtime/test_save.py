"""Tests of atomic checkpoint saves: manifest records, read-only inputs, free space, a killed save."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import numpy
import pytest
import torch

from kaggle_relay.errors import (
    ConfigError,
    DiskSpaceError,
    ReadOnlyLocationError,
    UnsafeCheckpointError,
)
from kaggle_relay.runtime.atomic import TEMP_PREFIX, clean_temporaries
from kaggle_relay.runtime.manifest import load_manifest, sha256_file
from kaggle_relay.runtime.save import (
    SIZE_MARGIN_PER_TENSOR,
    estimate_bytes,
    mark_done,
    save_checkpoint,
)


def small_state(value: float = 1.0, size: int = 16) -> dict:
    return {"model": OrderedDict(weight=torch.full((size,), value)), "step": 1}


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Return every file under ``folder`` with its size and sha256."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_size,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_save_records_manifest_entry(kaggle_root: Path) -> None:
    entry = save_checkpoint(
        small_state(),
        "ckpt-step10.pt",
        epoch=1,
        step=10,
        metrics={"val_loss": torch.tensor(0.25)},
        run_id="run-a",
    )
    folder = kaggle_root / "working" / "checkpoints"
    path = folder / "ckpt-step10.pt"
    manifest = load_manifest(folder)
    assert manifest is not None
    recorded = manifest.entry("ckpt-step10.pt")
    assert recorded == entry
    assert entry.bytes == path.stat().st_size
    assert entry.sha256 == sha256_file(path)
    assert entry.format == "torch-zip"
    assert (entry.epoch, entry.step, entry.run_id) == (1, 10, "run-a")
    assert entry.metrics == {"val_loss": 0.25}
    assert type(entry.metrics["val_loss"]) is float
    assert entry.created.endswith("Z")
    assert manifest.run_id == "run-a"
    assert not manifest.done


def test_saved_file_loads_weights_only(kaggle_root: Path) -> None:
    save_checkpoint(small_state(2.0), "a.pt", step=1)
    loaded = torch.load(kaggle_root / "working" / "checkpoints" / "a.pt", weights_only=True)
    assert torch.equal(loaded["model"]["weight"], torch.full((16,), 2.0))


def test_save_converts_numpy_values(kaggle_root: Path) -> None:
    state = {
        "model": {"w": torch.ones(2)},
        "best": numpy.float64(0.5),
        "rng": {"numpy": numpy.arange(3, dtype=numpy.uint32)},
    }
    save_checkpoint(state, "np.pt")
    loaded = torch.load(kaggle_root / "working" / "checkpoints" / "np.pt", weights_only=True)
    assert loaded["best"] == 0.5
    assert type(loaded["best"]) is float
    assert torch.equal(loaded["rng"]["numpy"], torch.tensor([0, 1, 2], dtype=torch.uint32))


def test_save_rejects_object_weights_only_blocks(kaggle_root: Path) -> None:
    with pytest.raises(UnsafeCheckpointError) as caught:
        save_checkpoint({"model": {"w": torch.ones(1)}, "loss_fn": torch.nn.MSELoss()}, "bad.pt")
    assert "checkpoint['loss_fn']" in str(caught.value)
    assert "torch.nn.modules.loss.MSELoss" in str(caught.value)
    assert not (kaggle_root / "working" / "checkpoints" / "bad.pt").exists()


def test_save_leaves_nan_metric_out(kaggle_root: Path) -> None:
    entry = save_checkpoint(small_state(), "nan.pt", metrics={"val_loss": float("nan"), "acc": 0.5})
    assert entry.metrics == {"acc": 0.5}


@pytest.mark.parametrize(
    "name", ["../escape.pt", "sub/ckpt.pt", "relay-manifest.json", f"{TEMP_PREFIX}x.pt", ""]
)
def test_save_rejects_invalid_names(kaggle_root: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        save_checkpoint(small_state(), name)


def test_save_replaces_existing_file(kaggle_root: Path) -> None:
    save_checkpoint(small_state(1.0), "last.pt", step=1)
    save_checkpoint(small_state(3.0), "last.pt", step=2)
    folder = kaggle_root / "working" / "checkpoints"
    manifest = load_manifest(folder)
    assert manifest is not None
    assert [entry.step for entry in manifest.files] == [2]
    assert torch.load(folder / "last.pt", weights_only=True)["model"]["weight"][0] == 3.0


def test_save_compact_drops_optimizer(kaggle_root: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    entry = save_checkpoint(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "c.pt", compact="bf16"
    )
    loaded = torch.load(kaggle_root / "working" / "checkpoints" / "c.pt", weights_only=True)
    assert entry.compact
    assert "optimizer" not in loaded
    assert loaded["model"]["weight"].dtype == torch.bfloat16


def test_mark_done_sets_flag(kaggle_root: Path) -> None:
    save_checkpoint(small_state(), "a.pt", step=1)
    mark_done()
    manifest = load_manifest(kaggle_root / "working" / "checkpoints")
    assert manifest is not None
    assert manifest.done
    assert manifest.events[-1]["kind"] == "done"


def test_save_done_sets_flag(kaggle_root: Path) -> None:
    save_checkpoint(small_state(), "final.pt", step=5, done=True)
    manifest = load_manifest(kaggle_root / "working" / "checkpoints")
    assert manifest is not None
    assert manifest.done


def test_save_keep_prunes_and_keeps_best(kaggle_root: Path) -> None:
    for step, loss in [(100, 0.5), (200, 0.31), (300, 0.35), (400, 0.40), (500, 0.45)]:
        save_checkpoint(
            small_state(),
            f"ckpt-{step}.pt",
            step=step,
            metrics={"val_loss": loss},
            keep=2,
            metric="val_loss",
            mode="min",
        )
    save_checkpoint(small_state(), "ckpt-600.pt", step=600, keep=2, metric="val_loss", mode="min")
    folder = kaggle_root / "working" / "checkpoints"
    assert sorted(path.name for path in folder.glob("ckpt-*.pt")) == [
        "ckpt-200.pt",
        "ckpt-500.pt",
        "ckpt-600.pt",
    ]


# --- K16: inputs are read-only ------------------------------------------------------------------


def test_save_under_input_writes_nothing(kaggle_root: Path) -> None:
    dataset = kaggle_root / "input" / "my-handoff"
    dataset.mkdir()
    torch.save(small_state(), dataset / "ckpt.pt")
    (dataset / "relay-manifest.json").write_text('{"schema": 1, "files": []}', encoding="utf-8")
    before = snapshot(kaggle_root / "input")

    with pytest.raises(ReadOnlyLocationError):
        save_checkpoint(small_state(), "ckpt.pt", folder=dataset, step=1)
    with pytest.raises(ReadOnlyLocationError):
        save_checkpoint(small_state(), "new.pt", folder=dataset / "sub", step=1)
    with pytest.raises(ReadOnlyLocationError):
        mark_done(dataset)

    assert snapshot(kaggle_root / "input") == before


def test_save_rejects_input_reached_through_symlink(kaggle_root: Path) -> None:
    link = kaggle_root / "working" / "to-input"
    link.symlink_to(kaggle_root / "input")
    before = snapshot(kaggle_root / "input")
    with pytest.raises(ReadOnlyLocationError):
        save_checkpoint(small_state(), "ckpt.pt", folder=link, step=1)
    assert snapshot(kaggle_root / "input") == before


# --- K16: free space -----------------------------------------------------------------------------


class FolderQuota:
    """A free-space probe for a file system of ``capacity`` bytes holding only ``folder``."""

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder = folder
        self.capacity = capacity

    def __call__(self, _path: Path) -> int:
        used = sum(path.stat().st_size for path in self.folder.rglob("*") if path.is_file())
        return self.capacity - used


def save_losses(quota: FolderQuota | None, steps: list[tuple[int, float]]) -> None:
    for step, loss in steps:
        save_checkpoint(
            small_state(size=100_000), f"ckpt-{step}.pt", step=step, metrics={"val_loss": loss},
            metric="val_loss", mode="min", free_space=quota,
        )  # fmt: skip


def test_estimate_counts_shared_storage_once() -> None:
    weight = torch.zeros(1000)
    shared = estimate_bytes({"a": weight, "b": weight, "c": weight[:10]})
    assert shared - estimate_bytes({"a": weight}) == 2 * SIZE_MARGIN_PER_TENSOR
    assert estimate_bytes({"a": weight}) >= 4000


def test_low_space_prunes_oldest_unprotected(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_losses(None, [(100, 0.50), (200, 0.31), (300, 0.35), (400, 0.40)])
    size = (folder / "ckpt-100.pt").stat().st_size
    quota = FolderQuota(folder, capacity=5 * size - 100_000)

    save_losses(quota, [(500, 0.45)])

    assert sorted(path.name for path in folder.glob("ckpt-*.pt")) == [
        "ckpt-200.pt", "ckpt-300.pt", "ckpt-400.pt", "ckpt-500.pt",
    ]  # fmt: skip
    manifest = load_manifest(folder)
    assert manifest is not None
    freed = [event for event in manifest.events if event["kind"] == "free-space"]
    assert [event["file"] for event in freed] == ["ckpt-100.pt"]


def test_low_space_never_prunes_best_or_newest(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_losses(None, [(100, 0.10), (200, 0.31)])
    before = snapshot(folder)
    quota = FolderQuota(folder, capacity=int(2.5 * (folder / "ckpt-100.pt").stat().st_size))

    with pytest.raises(DiskSpaceError) as caught:
        save_losses(quota, [(300, 0.45)])

    assert caught.value.needed > caught.value.free
    assert str(caught.value.needed) in str(caught.value)
    assert not (folder / "ckpt-300.pt").exists()
    manifest = load_manifest(folder)
    assert manifest is not None
    refused = [event for event in manifest.events if event["kind"] == "save-refused"]
    assert refused[0]["needed"] == caught.value.needed
    after = snapshot(folder)
    assert {name: after[name] for name in after if name.endswith(".pt")} == {
        name: before[name] for name in before if name.endswith(".pt")
    }


# --- C1 and C3: a save killed before its rename -----------------------------------------------------

KILLED_SAVE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from kaggle_relay.runtime.save import save_checkpoint

    folder = sys.argv[1]
    save_checkpoint({"model": {"w": torch.ones(4)}}, "ckpt-step10.pt", folder=folder, step=10)
    print("first saved", flush=True)
    # Writing 400 MB takes long enough for the test to find the temporary file and kill the process mid-save.
    save_checkpoint({"model": {"w": torch.zeros(100 * 1024 * 1024)}}, "ckpt-step20.pt", folder=folder, step=20)
    print("second saved", flush=True)
    """
)


def wait_for_temporary(folder: Path, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [path for path in folder.glob(f"{TEMP_PREFIX}*") if path.stat().st_size > 0]
        if found:
            return found[0]
        time.sleep(0.005)
    raise AssertionError(f"no temporary file appeared in {folder}")


def kill_during_second_save(folder: Path) -> None:
    """Run KILLED_SAVE_SCRIPT and SIGKILL it while its second checkpoint is half written."""
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE_SCRIPT, str(folder)], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "first saved"
        wait_for_temporary(folder)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
def test_killed_save_keeps_previous_checkpoint(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    kill_during_second_save(folder)

    leftovers = list(folder.glob(f"{TEMP_PREFIX}*"))
    assert leftovers, "the kill should have left the unfinished temporary file"
    manifest = load_manifest(folder)
    assert manifest is not None
    assert [entry.file for entry in manifest.files] == ["ckpt-step10.pt"]
    assert sha256_file(folder / "ckpt-step10.pt") == manifest.files[0].sha256
    assert (
        json.loads((folder / "relay-manifest.json").read_text(encoding="utf-8"))["files"][0]["step"]
        == 10
    )

    from kaggle_relay.runtime.select import find_latest_checkpoint

    selected = find_latest_checkpoint(patterns=["ckpt-*.pt"])
    assert selected is not None
    assert Path(selected.path).name == "ckpt-step10.pt"
    assert clean_temporaries(kaggle_root / "working") == leftovers
    assert not list(folder.glob(f"{TEMP_PREFIX}*"))
