"""Tests of start_session: cleanup, accelerator and handoff checks, selection and copy, saving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import AcceleratorMismatchError, HandoffMismatchError
from kaggle_relay.runtime.atomic import TEMP_PREFIX
from kaggle_relay.runtime.manifest import load_manifest
from kaggle_relay.runtime.save import save_checkpoint
from kaggle_relay.runtime.session import start_session
from kaggle_relay.runtime.state import capture_training_state
from tests.runtime.test_save import kill_during_second_save, snapshot


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KAGGLE_RELAY_ACCELERATOR",
        "KAGGLE_RELAY_HANDOFF",
        "KAGGLE_RELAY_SESSION_DEADLINE",
        "KAGGLE_RELAY_SESSION_LIMIT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_session_from_scratch_saves_and_finishes(
    kaggle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = start_session(patterns=["ckpt-*.pt"], metric="val_loss", mode="min", keep=2)
    assert session.checkpoint is None
    assert session.load() is None
    for step, loss in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.6)]:
        session.save({"model": {"w": torch.ones(2)}}, step=step, metrics={"val_loss": loss})
    session.finish(done=True)

    folder = kaggle_root / "working" / "checkpoints"
    names = sorted(path.name for path in folder.glob("ckpt-*.pt"))
    assert names == ["ckpt-step000000002.pt", "ckpt-step000000003.pt", "ckpt-step000000004.pt"]
    manifest = load_manifest(folder)
    assert manifest is not None
    assert manifest.done
    assert session.clock.durations["save"] > 0
    assert capsys.readouterr().out


def test_session_rejects_wrong_accelerator_first(kaggle_root: Path) -> None:
    leftover = kaggle_root / "working" / f"{TEMP_PREFIX}abcd-x.pt"
    leftover.write_bytes(b"partial")
    with pytest.raises(AcceleratorMismatchError):
        start_session(patterns=["*.pt"], accelerator="NvidiaTeslaT4")
    assert not leftover.exists()


def test_session_checks_expected_handoff(
    kaggle_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "KAGGLE_RELAY_HANDOFF", json.dumps({"dataset": "alice/h", "version": 2, "run_id": "r"})
    )
    with pytest.raises(HandoffMismatchError):
        start_session(patterns=["*.pt"], report=False)


def test_session_copies_input_checkpoint_to_working(kaggle_root: Path) -> None:
    dataset = kaggle_root / "input" / "relay-handoff"
    model = torch.nn.Linear(3, 1)
    state = capture_training_state(
        model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=4, step=40
    )
    dataset.mkdir()
    torch.save(state, dataset / "ckpt-step000000040.pt")
    before = snapshot(kaggle_root / "input")

    session = start_session(patterns=["ckpt-*.pt"], require_keys=["model"], report=False)

    assert session.checkpoint is not None
    assert session.origin is not None
    assert session.origin.source == "input_dataset"
    assert session.checkpoint.source == "working"
    assert Path(session.checkpoint.path).parent == kaggle_root / "working" / "checkpoints"
    fresh = torch.nn.Linear(3, 1)
    report = session.resume(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert report.step == 40
    assert torch.equal(fresh.weight, model.weight)
    session.finish()
    assert snapshot(kaggle_root / "input") == before


def test_session_picks_latest_valid_of_corrupt_files(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, "ckpt-step10.pt", step=10)
    torch.save({"model": {"w": torch.ones(1000)}}, folder / "ckpt-step20.pt")
    data = (folder / "ckpt-step20.pt").read_bytes()
    (folder / "ckpt-step20.pt").write_bytes(data[: len(data) // 2])
    (folder / "ckpt-step30.pt").write_bytes(b"")

    session = start_session(patterns=["ckpt-*.pt"], report=False)

    assert session.checkpoint is not None
    assert Path(session.checkpoint.path).name == "ckpt-step10.pt"
    reasons = {Path(c.path).name: c.reason for c in session.scan.candidates if not c.valid}
    assert set(reasons) == {"ckpt-step20.pt", "ckpt-step30.pt"}
    session.finish()


@pytest.mark.slow
def test_session_after_killed_save_resumes_previous(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    kill_during_second_save(folder)
    assert list(folder.glob(f"{TEMP_PREFIX}*"))

    session = start_session(patterns=["ckpt-*.pt"], report=False)

    assert session.checkpoint is not None
    assert Path(session.checkpoint.path).name == "ckpt-step10.pt"
    assert not list(folder.glob(f"{TEMP_PREFIX}*"))
    session.finish()
