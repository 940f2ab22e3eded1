"""The chain state machine end to end: the real kaggle client, the emulator, real training sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.cli import rehearse
from kaggle_relay.errors import ConfigError, KaggleUnavailableError, KernelRunError
from kaggle_relay.relay import chain as chains
from kaggle_relay.relay.config import load_config
from kaggle_relay.relay.ledger import Ledger
from tests.relay.chainkit import (
    KERNEL,
    check_chain,
    dataset_versions,
    kernel_versions,
    short_emulator,
    start_emulator,
    wait_until,
    write_project,
    write_step_project,
)

__all__ = ["short_emulator"]

pytestmark = pytest.mark.slow


def test_chain_resumes_across_sessions_to_done(
    tmp_path: Path, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 16 s session fits at most 8 epochs of 2 s, so 12 epochs need two sessions or more:
    # at least one resume, whatever the machine's speed (a quiet machine fits 6 or 7 a session).
    project = write_project(tmp_path / "project", epochs=12, epoch_seconds=2.0)
    emulator: Any = start_emulator(tmp_path / "emulator", _isolated_kaggle_config, monkeypatch, session_limit=16.0)
    try:
        chain = load_config(project.config).chain[0]
        outcome = chains.advance(chain, wait=True)
        ledger = check_chain(emulator, project)
    finally:
        emulator.stop()

    assert outcome.state == "done", ledger.data.model_dump_json(indent=1)
    assert ledger.days >= 2
    handoff = ledger.data.handoff
    assert handoff is not None and handoff.checkpoint is not None
    assert handoff.checkpoint.epoch == 11
    assert handoff.checkpoint.done
    assert "val_acc" in handoff.checkpoint.metrics
    assert ledger.data.best is not None

    found = rehearse.final_checkpoint(project.config, chain.name)
    assert found is not None
    reference = rehearse.reference_run(project.folder, tmp_path / "reference")
    assert rehearse.compare_models(found[0], reference)["identical"]


def test_tick_during_a_run_only_polls(tmp_path: Path, short_emulator: Any) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    project = write_step_project(tmp_path / "p", epochs=1, once=str(hold), trouble="hold", trouble_epoch=0)
    # A second chain on the same kernel: a misconfiguration that must not start a second session.
    project.append_config('\n[[chain]]\nname = "other"\nkernel = "kernel"\ndataset = "relay-tester/other-handoff"\n')
    first, second = load_config(project.config).chain

    assert chains.advance(first).state == "running"
    wait_until(lambda: short_emulator.kernels.version(KERNEL, 1)["status"] == "RUNNING", what="version 1 to run")
    again = chains.advance(first)

    assert again.state == "running"
    assert kernel_versions(short_emulator) == [1]
    ledger = Ledger.open(project.folder / ".relay", first.name)
    assert [step["phase"] for step in ledger.data.steps if step["step"] == "push"] == ["begin", "end"]
    with pytest.raises(KernelRunError, match="running"):
        chains.advance(second)
    assert kernel_versions(short_emulator) == [1]

    hold.unlink()
    assert chains.advance(first, wait=True).state == "done"
    assert kernel_versions(short_emulator) == [1]


@pytest.mark.parametrize(("attempts", "pushed"), [(1, []), (2, [1])])
def test_retry_policy_reaches_kaggle_calls(
    tmp_path: Path, short_emulator: Any, attempts: int, pushed: list[int]
) -> None:
    project = write_step_project(tmp_path / "p", epochs=1)
    project.append_config(f"\n[chain.retry]\nmax_attempts = {attempts}\ninitial_seconds = 0.01\nmax_seconds = 0.05\n")
    chain = load_config(project.config).chain[0]
    # One 503 on the first call of the push step (GetKernel, before SaveKernel).
    short_emulator.faults.inject("GetKernel", "503")

    if attempts == 1:
        with pytest.raises(KaggleUnavailableError):
            chains.advance(chain)
    else:
        assert chains.advance(chain).state == "running"

    assert kernel_versions(short_emulator) == pushed


def test_failed_dataset_version_republished(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    chain = load_config(project.config).chain[0]
    short_emulator.faults.fail_next_dataset_version()

    outcome = chains.advance(chain, wait=True)

    assert outcome.state == "done"
    ledger = Ledger.open(project.folder / ".relay", chain.name)
    first, second = ledger.runs
    assert first.failed_versions == [1]
    assert first.published is not None and first.published.version == 2
    assert second.handoff_in == first.published
    # The second session ran to the end, so the runtime accepted the handoff identity of version 2.
    assert second.status == "complete"
    assert second.published is not None and second.published.version == 3
    assert dataset_versions(short_emulator) == [1, 2, 3]
    assert kernel_versions(short_emulator) == [1, 2]
    assert "ended FAILED" in ledger.data.warnings[0].message


def test_metadata_error_names_project_file(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=1)
    metadata = project.folder / "kernel" / "kernel-metadata.json"
    metadata.write_text(metadata.read_text(encoding="utf-8").replace("relay-tester/", "someone-else/"),
                        encoding="utf-8")
    chain = load_config(project.config).chain[0]

    with pytest.raises(ConfigError) as caught:
        chains.advance(chain)

    assert str(caught.value).startswith(f"{metadata}: id: ")
    assert ".relay" not in str(caught.value)
    assert caught.value.path == str(metadata)
    # Nothing reached Kaggle and the push step is closed, so the next tick does not report an interrupted push.
    assert Ledger.open(project.folder / ".relay", chain.name).open_step() is None
    assert kernel_versions(short_emulator) == []
