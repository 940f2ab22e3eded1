"""Harvesting a finished session: how it ended, which checkpoint goes on, which warnings the ledger records.

The end-to-end cases run real sessions on the emulator: a session killed at
the time limit, and a session that failed after saving and left a truncated
file. The table cases validate real torch checkpoints on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kaggle_relay.relay import chain as chains
from kaggle_relay.relay.config import ChainConfig, Quota, load_config
from kaggle_relay.relay.harvest import (
    classify_end,
    examine,
    find_restart,
    harvest,
    output_folder,
    report,
)
from kaggle_relay.relay.ledger import CheckpointInfo, Ledger, Run
from kaggle_relay.runtime.manifest import MANIFEST_NAME
from kaggle_relay.runtime.save import save_checkpoint
from tests.relay.chainkit import (
    check_chain,
    dataset_versions,
    short_emulator,
    start_emulator,
    write_step_project,
)
from tests.relay.emulated import relay_api

__all__ = ["relay_api", "short_emulator"]

TIMEOUT_LOG = "Execution timed out: the session limit of 10 seconds was reached"


@pytest.mark.parametrize(
    ("status", "message", "log", "expected"),
    [
        ("complete", "", "", "complete"),
        ("error", "Traceback: boom", "", "error"),
        ("cancel_acknowledged", "", TIMEOUT_LOG, "time_limit"),
        ("CANCEL_ACKNOWLEDGED", "", "[stderr] Cell timed out after 43200 s", "time_limit"),
        ("cancel_acknowledged", "", "stopped by the user", "cancelled"),
        ("cancel_acknowledged", "Cancelled by user", TIMEOUT_LOG, "cancelled"),
    ],
)
def test_classify_end(status: str, message: str, log: str, expected: str) -> None:
    assert classify_end(status, message, log) == expected


def test_classify_end_reads_only_log_tail() -> None:
    log = "training with timeout=30 for the data loader\n" + "epoch done\n" * 500

    assert classify_end("cancel_acknowledged", "", log) == "cancelled"
    assert classify_end("cancel_acknowledged", "", log + TIMEOUT_LOG) == "time_limit"


# --- examine: real checkpoint files, no Kaggle ------------------------------------------------


def chain_config(**settings: Any) -> ChainConfig:
    return ChainConfig(name="digits", kernel="relay-tester/relay-chain-test", dataset="relay-tester/handoff-data",
                       patterns=["ckpt-*.pt"], require_keys=["model"], **settings)


def save_epochs(folder: Path, accuracies: list[float]) -> None:
    for epoch, accuracy in enumerate(accuracies):
        state = {"model": {"weight": torch.full((2,), float(epoch))}, "epoch": epoch, "step": epoch + 1}
        save_checkpoint(state, f"ckpt-{epoch:04d}.pt", folder=folder, epoch=epoch, step=epoch + 1,
                        metrics={"val_acc": accuracy})


def test_examine_rejects_truncated_file_outside_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    save_epochs(folder, [0.5, 0.6, 0.7, 0.8])
    data = (folder / "ckpt-0003.pt").read_bytes()
    (folder / "ckpt-0004.pt").write_bytes(data[: len(data) // 2])

    found = examine(tmp_path, chain_config(), last_step=None)

    assert found.newest is not None
    assert found.newest.file == "checkpoints/ckpt-0003.pt"
    assert [Path(c.path).name for c in found.rejected] == ["ckpt-0004.pt"]
    assert found.manifest_found


def test_examine_rejects_file_with_wrong_hash(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    save_epochs(folder, [0.5, 0.6])
    # Same size, other bytes: only the manifest's hash can tell.
    path = folder / "ckpt-0001.pt"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))

    found = examine(tmp_path, chain_config(), last_step=None)

    assert found.newest is not None and found.newest.file == "checkpoints/ckpt-0000.pt"
    assert [Path(c.path).name for c in found.rejected] == ["ckpt-0001.pt"]


def test_examine_without_manifest_validates_files(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    save_epochs(folder, [0.5, 0.6])
    (folder / MANIFEST_NAME).unlink()

    found = examine(tmp_path, chain_config(), last_step=None)

    assert not found.manifest_found
    assert found.newest is not None and found.newest.file == "checkpoints/ckpt-0001.pt"
    assert found.checkpoint_files == 2


def test_examine_never_returns_older_than_handoff(tmp_path: Path) -> None:
    save_epochs(tmp_path / "checkpoints", [0.5, 0.6, 0.7])

    assert examine(tmp_path, chain_config(), last_step=3).newest is None
    newer = examine(tmp_path, chain_config(), last_step=2).newest
    assert newer is not None and newer.step == 3


def test_examine_reports_best_apart_from_newest(tmp_path: Path) -> None:
    save_epochs(tmp_path / "checkpoints", [0.5, 0.9, 0.7])

    found = examine(tmp_path, chain_config(metric="val_acc", mode="max"), last_step=None)

    assert found.newest is not None and found.newest.epoch == 2
    assert found.best is not None and found.best.epoch == 1
    assert found.best.metrics == {"val_acc": 0.9}


def test_examine_best_follows_min_mode(tmp_path: Path) -> None:
    save_epochs(tmp_path / "checkpoints", [0.5, 0.9, 0.7])

    found = examine(tmp_path, chain_config(metric="val_acc", mode="min"), last_step=None)

    assert found.best is not None and found.best.epoch == 0


# --- end to end on the emulator ---------------------------------------------------------------


@pytest.mark.slow
def test_time_limit_kill_warns_and_resumes(
    tmp_path: Path, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    once = tmp_path / "hang-once"
    once.touch()
    project = write_step_project(tmp_path / "p", epochs=2, once=str(once), trouble="hang", trouble_epoch=1)
    # Killed outputs are dropped, as on Kaggle.
    emulator: Any = start_emulator(tmp_path / "emulator", _isolated_kaggle_config, monkeypatch,
                                   session_limit=10.0, kill_grace=0.5, keep_killed_outputs=False)
    try:
        chain = load_config(project.config).chain[0]
        outcome = chains.advance(chain, wait=True)
        ledger = check_chain(emulator, project)
    finally:
        emulator.stop()

    assert outcome.state == "done"
    killed = ledger.runs[1]
    assert killed.status == "cancel_acknowledged"
    assert killed.failure_message == ""
    assert killed.ended_by == "time_limit"
    assert killed.outcome == "no_checkpoint"
    retried = ledger.runs[2]
    assert retried.handoff_in == ledger.runs[0].published
    assert retried.checkpoint is not None and retried.checkpoint.epoch == 1
    warning = ledger.data.warnings[0]
    assert "session time limit" in warning.message
    assert "stop margin" in warning.hint


@pytest.mark.slow
def test_failed_session_hands_off_valid_checkpoint(tmp_path: Path, short_emulator: Any) -> None:
    once = tmp_path / "crash-once"
    once.touch()
    project = write_step_project(tmp_path / "p", epochs=2, once=str(once), trouble="crash", trouble_epoch=0)
    chain = load_config(project.config).chain[0]

    outcome = chains.advance(chain, wait=True)

    assert outcome.state == "done"
    ledger = check_chain(short_emulator, project)
    failed = ledger.runs[0]
    assert failed.status == "error"
    assert failed.partial
    assert failed.checkpoint is not None and failed.checkpoint.file.endswith("ckpt-0000.pt")
    assert "ckpt-0001.pt" in ledger.data.warnings[0].message
    assert not ledger.runs[1].partial
    assert ledger.runs[1].handoff_in == failed.published
    assert dataset_versions(short_emulator) == [1, 2]
    published = short_emulator.store.datasets["relay-tester/relay-chain-test-handoff"]["versions"][0]["files"]
    assert sorted(item["name"] for item in published) == ["ckpt-0000.pt", MANIFEST_NAME]


def test_output_without_manifest_is_reported(tmp_path: Path) -> None:
    """The warning a harvest records when the outputs hold checkpoints but no manifest."""
    save_epochs(tmp_path / "checkpoints", [0.5])
    (tmp_path / "checkpoints" / MANIFEST_NAME).unlink()
    ledger = Ledger.open(tmp_path / ".relay", "digits")
    context = chains.Context(chain_config(), ledger, api=None, quota=Quota(), state_dir=tmp_path / ".relay",
                             hook=lambda _step: None)
    run = Run(day=1, run_id="r1", kernel_version=1, status="complete", ended_by="complete")
    ledger.runs.append(run)

    report(context, run, examine(tmp_path, chain_config(), last_step=None))

    assert "validated directly" in ledger.data.warnings[0].message


#: A training script that never resumes: each session trains epochs 0 and 1 (steps 1 and 2) from scratch.
SCRATCH_SCRIPT = '''"""A test kernel that ignores the checkpoint start_session found."""
import torch

from kaggle_relay.runtime import capture_training_state, start_session

session = start_session(patterns=["ckpt-*.pt"], require_keys=["model"])
model = torch.nn.Linear(2, 1)
for epoch in range(2):
    state = capture_training_state(model, epoch=epoch, step=epoch + 1)
    session.save(state, f"ckpt-{epoch:04d}.pt", epoch=epoch, step=epoch + 1, metrics={"val_acc": 0.5})
session.finish()
'''


@pytest.mark.slow
def test_session_that_does_not_resume_fails_chain(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p")
    project.script.write_text(SCRATCH_SCRIPT, encoding="utf-8")
    chain = load_config(project.config).chain[0]

    outcome = chains.advance(chain, wait=True)

    ledger = check_chain(short_emulator, project)
    assert outcome.state == "failed"
    # Caught after the first session that had a handoff: no third session was pushed.
    assert ledger.days == 2
    second = ledger.runs[1]
    assert second.handoff_in is not None
    assert second.outcome == "restarted"
    assert second.outcome != "progress"
    assert second.published is None
    error = ledger.data.error
    assert error is not None
    assert "started from scratch" in error.message
    assert "restart at step 1" in error.message
    assert "held step 2" in error.message
    assert "session.checkpoint" in error.hint
    assert "session.resume" in error.hint


@pytest.mark.parametrize(
    ("handed", "expected"),
    [
        (CheckpointInfo(file="ckpt-0002.pt", epoch=2, step=3), (1, 3, 3)),
        (CheckpointInfo(file="ckpt-0005.pt", epoch=5, step=6), (1, 3, 6)),
        (CheckpointInfo(file="ckpt-0001.pt", epoch=1, step=2), (1, 3, 2)),
        (CheckpointInfo(file="ckpt-0000.pt", epoch=0, step=1), None),
    ],
)
def test_find_restart_compares_with_handoff(
    tmp_path: Path, handed: CheckpointInfo, expected: tuple[int, int, int] | None
) -> None:
    save_epochs(tmp_path / "checkpoints", [0.5, 0.6, 0.7])

    found = examine(tmp_path, chain_config(), last_step=handed.step)
    restart = find_restart(found.valid, handed)

    if expected is None:
        assert restart is None
    else:
        assert restart is not None
        assert (restart.lowest, restart.newest, restart.handed) == expected


def test_find_restart_ignores_reset_step_counter(tmp_path: Path) -> None:
    # Later epochs with lower steps: the script resumed but counted steps from 0 again.
    for epoch, step in [(3, 1), (4, 2)]:
        state = {"model": {"weight": torch.full((2,), float(epoch))}, "epoch": epoch, "step": step}
        save_checkpoint(state, f"ckpt-{epoch:04d}.pt", folder=tmp_path / "checkpoints", epoch=epoch, step=step)
    handed = CheckpointInfo(file="ckpt-0002.pt", epoch=2, step=30)

    found = examine(tmp_path, chain_config(), last_step=handed.step)

    assert find_restart(found.valid, handed) is None


# --- selective download: only what the handoff needs ------------------------------------------


def finished_session(relay_api: Any, emulator: Any, tmp_path: Path, accuracies: list[float]) -> tuple[str, Path]:
    """Push a kernel that ends at once and give its version 1 the checkpoints of ``accuracies`` as outputs."""
    from kaggle_relay.relay import kernels
    from tests.relay.emulated import script_kernel

    pushed = kernels.push_kernel(relay_api, script_kernel(tmp_path, "relay-chain-test", "print('done')\n"))
    kernels.wait_for_kernel(relay_api, pushed.ref, timeout=60, interval=0.1)
    local = tmp_path / "saved" / "checkpoints"
    save_epochs(local, accuracies)
    kernel = str(pushed.ref.unversioned())
    for path in sorted(local.iterdir()):
        emulator.add_output(kernel, 1, f"checkpoints/{path.name}", path.read_bytes())
    return kernel, local


def harvest_context(relay_api: Any, tmp_path: Path, kernel: str, **settings: Any) -> tuple[Any, Run]:
    config = ChainConfig(name="digits", kernel=kernel, dataset="relay-tester/handoff-data",
                         patterns=["ckpt-*.pt"], require_keys=["model"], **settings)
    ledger = Ledger.open(tmp_path / ".relay", "digits")
    context = chains.Context(config, ledger, api=relay_api, quota=Quota(), state_dir=tmp_path / ".relay",
                             hook=lambda _step: None)
    run = Run(day=1, run_id="r1", kernel_version=1, status="complete")
    ledger.runs.append(run)
    return context, run


def downloaded(context: Any, run: Run) -> list[str]:
    folder = output_folder(context, run) / "checkpoints"
    return sorted(path.name for path in folder.iterdir())


def test_harvest_downloads_newest_and_best_only(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    kernel, _ = finished_session(relay_api, emulator, tmp_path, [0.5, 0.9, 0.6, 0.7])
    context, run = harvest_context(relay_api, tmp_path, kernel, metric="val_acc", mode="max")

    found = harvest(context, run)

    assert found is not None
    assert found.file == "checkpoints/ckpt-0003.pt"
    assert downloaded(context, run) == ["ckpt-0001.pt", "ckpt-0003.pt", MANIFEST_NAME]
    assert context.ledger.data.best is not None
    assert context.ledger.data.best.checkpoint.file == "checkpoints/ckpt-0001.pt"


def test_harvest_falls_back_when_newest_is_corrupt(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    kernel, local = finished_session(relay_api, emulator, tmp_path, [0.5, 0.6, 0.7])
    # Replace version 1's newest output with the same size of other bytes: its sha256 no longer matches.
    corrupt = bytearray((local / "ckpt-0002.pt").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    entries = emulator.kernels.version(kernel, 1)["outputs"]
    newest = next(entry for entry in entries if entry["name"] == "checkpoints/ckpt-0002.pt")
    emulator.store.resolve(newest["path"]).write_bytes(bytes(corrupt))
    context, run = harvest_context(relay_api, tmp_path, kernel)

    found = harvest(context, run)

    assert found is not None
    assert found.file == "checkpoints/ckpt-0001.pt"
    assert downloaded(context, run) == ["ckpt-0001.pt", "ckpt-0002.pt", MANIFEST_NAME]
    assert "ckpt-0002.pt" in context.ledger.data.warnings[0].message


def test_harvest_counts_skipped_checkpoints_as_restart_evidence(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    from kaggle_relay.relay.ledger import DatasetPin, Handoff

    kernel, _ = finished_session(relay_api, emulator, tmp_path, [0.5, 0.6, 0.7])
    context, run = harvest_context(relay_api, tmp_path, kernel)
    handed = CheckpointInfo(file="ckpt-0009.pt", epoch=9, step=10)
    context.ledger.data.handoff = Handoff(dataset="relay-tester/handoff-data", version=3, run_id="r0", checkpoint=handed)
    run.handoff_in = DatasetPin(dataset="relay-tester/handoff-data", version=3)

    found = harvest(context, run)

    assert found is None
    assert context.ledger.state == "failed"
    assert downloaded(context, run) == [MANIFEST_NAME]
