"""NumPy values in a checkpoint: other people's files need trusted globals, our own saves never do."""

from __future__ import annotations

from pathlib import Path

import numpy
import torch

from kaggle_relay.runtime import validate_checkpoint
from kaggle_relay.runtime.manifest import load_manifest
from kaggle_relay.runtime.save import save_checkpoint
from kaggle_relay.runtime.trust import TrustPolicy


def test_numpy_values_anywhere_in_user_file_are_named(tmp_path: Path) -> None:
    path = tmp_path / "user.pt"
    obj = {
        "model": {"w": torch.ones(2)},
        "history": {"losses": numpy.arange(3.0), "epoch": numpy.int64(4)},
        "rng": {"generator": numpy.random.default_rng(0).bit_generator.state},
    }
    torch.save(obj, path)

    candidate = validate_checkpoint(path)

    assert not candidate.valid
    assert candidate.reason.startswith("structurally sound but needs trusted globals: ")
    assert "numpy.ndarray (importable)" in candidate.reason
    assert validate_checkpoint(path, trust=TrustPolicy(sources={"working": "globals"},
                                                      globals=candidate.blocked_globals)).valid  # fmt: skip


def test_own_save_of_numpy_values_loads_weights_only(kaggle_root: Path) -> None:
    obj = {
        "model": {"w": torch.ones(2)},
        "extra": {"hist": numpy.arange(3), "best": numpy.float64(0.1), "n": numpy.int64(3), "flag": numpy.bool_(True)},
        "rng": numpy.random.get_state(),
    }
    entry = save_checkpoint(obj, "own.pt", metrics={"acc": numpy.float32(0.5), "loss": torch.tensor(0.25)})

    path = kaggle_root / "working" / "checkpoints" / "own.pt"
    loaded = torch.load(path, weights_only=True)
    assert type(loaded["extra"]["best"]) is float
    assert type(loaded["extra"]["n"]) is int
    assert entry.metrics == {"acc": 0.5, "loss": 0.25}
    assert validate_checkpoint(path).valid


def test_own_save_accepts_numpy_epoch_and_step(kaggle_root: Path) -> None:
    entry = save_checkpoint({"model": {"w": torch.ones(2)}}, "c.pt", epoch=numpy.int64(3), step=numpy.int64(30))

    assert (entry.epoch, entry.step) == (3, 30)
    manifest = load_manifest(kaggle_root / "working" / "checkpoints")
    assert manifest is not None
    assert [(item.file, item.step) for item in manifest.files] == [("c.pt", 30)]
