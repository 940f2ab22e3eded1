"""Crashes at every step of the loop, then a rerun: nothing repeated, nothing skipped, nothing older.

Two ways to crash: an exception raised from the chain's hook at each hook
point (in-process), and SIGKILL of a real `kaggle-relay next-day` process
held inside a Kaggle call by an emulator fault.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.relay import chain as chains
from kaggle_relay.relay.config import load_config
from kaggle_relay.relay.ledger import Ledger
from tests.relay.chainkit import (
    check_chain,
    dataset_versions,
    finish,
    kernel_versions,
    next_day_process,
    short_emulator,
    wait_until,
    write_step_project,
)

__all__ = ["short_emulator"]

pytestmark = pytest.mark.slow


class Crash(Exception):
    """Raised from the hook: the process "dies" at that point."""


def test_crash_at_every_hook_point(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    chain = load_config(project.config).chain[0]
    crashed: list[str] = []

    def crash_once(step: str) -> None:
        if step not in crashed:
            crashed.append(step)
            raise Crash(step)

    outcome = None
    for _ in range(3 * len(chains.HOOK_POINTS)):
        try:
            outcome = chains.advance(chain, wait=True, hook=crash_once)
            break
        except Crash:
            Ledger.open(project.folder / ".relay", chain.name)  # still parses after each crash

    assert outcome is not None and outcome.state == "done"
    assert sorted(crashed) == sorted(chains.HOOK_POINTS)
    ledger = check_chain(short_emulator, project)
    assert ledger.days == 2
    assert ledger.data.handoff is not None and ledger.data.handoff.checkpoint is not None
    assert ledger.data.handoff.checkpoint.done


def kill(process: Any) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


def open_step(project: Any) -> str:
    step = Ledger.open(project.folder / ".relay", "digits").open_step()
    return step["step"] if step else ""


def test_killed_next_day_recovers(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    faults = short_emulator.faults

    # 1. Killed after SaveKernel reached Kaggle, before the ledger recorded the push.
    faults.inject("SaveKernel", "slow", seconds=1.5)
    process = next_day_process(project)
    wait_until(lambda: not faults.pending(), what="the push to reach the emulator")
    kill(process)
    wait_until(lambda: kernel_versions(short_emulator) == [1], what="the emulator to create version 1")
    assert open_step(project) == "push"

    code, result = finish(next_day_process(project))
    assert code == 10, result
    assert any("not pushing again" in line for line in result["chains"][0]["messages"])
    assert kernel_versions(short_emulator) == [1]

    # 2. Killed in the middle of the download: one output file written, the next one in flight.
    faults.inject("download", "slow", seconds=0.01)
    faults.inject("download", "slow", seconds=60)
    process = next_day_process(project, "--wait")
    wait_until(lambda: not faults.pending(), what="the second download to start")
    kill(process)
    assert open_step(project) == "harvest"

    # 3. Killed after CreateDataset reached Kaggle, before the relay saw the version READY.
    faults.inject("CreateDataset", "slow", seconds=1.5)
    process = next_day_process(project, "--wait")
    wait_until(lambda: not faults.pending(), what="the dataset creation to reach the emulator")
    kill(process)
    wait_until(lambda: dataset_versions(short_emulator) == [1], what="the emulator to create dataset version 1")
    assert open_step(project) == "publish"

    code, result = finish(next_day_process(project, "--wait"))
    assert code == 0, result
    assert any("not publishing again" in line for line in result["chains"][0]["messages"])
    ledger = check_chain(short_emulator, project)
    assert ledger.days == 2
    assert kernel_versions(short_emulator) == [1, 2]
    assert dataset_versions(short_emulator) == [1, 2]
