"""start_session with a handoff expected: the mounted handoff must hold a valid checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import NoValidCheckpointError
from kaggle_relay.runtime.manifest import load_manifest
from kaggle_relay.runtime.save import save_checkpoint
from kaggle_relay.runtime.session import start_session
from kaggle_relay.runtime.state import capture_training_state

IDENTITY = {"dataset": "alice/h", "version": 2, "run_id": "r2"}


@pytest.fixture(autouse=True)
def _expected_handoff(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAGGLE_RELAY_ACCELERATOR", "KAGGLE_RELAY_SESSION_DEADLINE", "KAGGLE_RELAY_SESSION_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_RELAY_HANDOFF", json.dumps(IDENTITY))


def mount_handoff(kaggle_root: Path, *, truncate: bool) -> Path:
    """Write a handoff dataset under input/ as the relay publishes it, its checkpoint cut short when ``truncate``."""
    # save_checkpoint writes nothing under input/, so the dataset is built beside it and moved in.
    staging = kaggle_root / "published"
    model = torch.nn.Linear(3, 1)
    state = capture_training_state(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=4, step=40)
    save_checkpoint(state, "ckpt-0004.pt", folder=staging, epoch=4, step=40)
    manifest = load_manifest(staging)
    assert manifest is not None
    manifest.handoff = dict(IDENTITY)
    manifest.save()
    folder = kaggle_root / "input" / "h"
    staging.rename(folder)
    if truncate:
        path = folder / "ckpt-0004.pt"
        path.write_bytes(path.read_bytes()[:100])
    return folder


def test_valid_handoff_is_resumed(kaggle_root: Path) -> None:
    mount_handoff(kaggle_root, truncate=False)

    session = start_session(patterns=["ckpt-*.pt"], require_keys=["model"], report=False)

    assert session.checkpoint is not None
    assert session.checkpoint.step == 40
    session.finish()


def test_handoff_without_valid_checkpoint_raises(kaggle_root: Path) -> None:
    folder = mount_handoff(kaggle_root, truncate=True)

    with pytest.raises(NoValidCheckpointError) as caught:
        start_session(patterns=["ckpt-*.pt"], require_keys=["model"], report=False)

    message = str(caught.value)
    assert "contains no valid checkpoint" in message
    assert str(folder / "ckpt-0004.pt") in message
    assert "alice/h" in message
    assert [Path(candidate.path).name for candidate in caught.value.rejected] == ["ckpt-0004.pt"]
    assert caught.value.rejected[0].reason in message
    assert not (kaggle_root / "working" / "checkpoints" / "ckpt-0004.pt").exists()


def test_handoff_without_matching_file_raises(kaggle_root: Path) -> None:
    mount_handoff(kaggle_root, truncate=False)

    with pytest.raises(NoValidCheckpointError) as caught:
        start_session(patterns=["model-*.safetensors"], report=False)

    assert "no file matching model-*.safetensors" in str(caught.value)
