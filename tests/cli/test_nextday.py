"""`kaggle-relay next-day`: exit codes for cron, quota refusal, bad config, credentials, the chain lock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.cli.main import main
from kaggle_relay.relay.ledger import Ledger
from tests.relay.chainkit import (
    KERNEL,
    finish,
    kernel_versions,
    next_day_process,
    short_emulator,
    wait_until,
    write_project,
    write_step_project,
)

__all__ = ["short_emulator"]


def test_quota_refusal_pushes_nothing(tmp_path: Path, short_emulator: object, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_project(tmp_path / "p")
    text = project.config.read_text(encoding="utf-8")
    text = text.replace('accelerator = "none"', 'accelerator = "NvidiaTeslaT4"\nsession_timeout = 7200')
    text = text.replace("gpu_hours = 30", "gpu_hours = 1")
    project.config.write_text(text, encoding="utf-8")
    capsys.readouterr()

    code = main(["next-day", "--config", str(project.config), "--json"])

    assert code == 4
    result = json.loads(capsys.readouterr().out)
    assert "weekly quota" in result["chains"][0]["blocked"]
    ledger = Ledger.open(project.folder / ".relay", "digits")
    assert ledger.runs == []
    assert ledger.data.warnings[-1].hint


def test_bad_config_exits_needs_attention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_project(tmp_path / "p")
    project.append_config("\n[chain.stop2]\n")

    code = main(["next-day", "--config", str(project.config), "--json"])

    assert code == 4
    assert "relay.toml" in capsys.readouterr().err


def test_missing_credentials_exits_five(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_project(tmp_path / "p")

    code = main(["next-day", "--config", str(project.config), "--json"])

    captured = capsys.readouterr()
    assert code == 5
    assert "KAGGLE_USERNAME" in captured.err


@pytest.mark.slow
def test_second_next_day_skips_locked_chain(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=1)
    # The first tick takes the lock, then waits inside its first Kaggle call (GetKernel, before the push).
    short_emulator.faults.inject("GetKernel", "slow", seconds=20)
    first = next_day_process(project)
    wait_until(lambda: not short_emulator.faults.pending(), what="the first tick to reach GetKernel")

    code, result = finish(next_day_process(project))

    assert code == 10
    assert result["chains"][0]["state"] == "locked"
    assert "digits" in result["chains"][0]["message"]
    first.kill()
    first.communicate(timeout=30)
    assert kernel_versions(short_emulator) == []

    code, result = finish(next_day_process(project))

    assert code == 10, result
    assert result["chains"][0]["state"] == "running"
    assert kernel_versions(short_emulator) == [1]


@pytest.mark.slow
def test_concurrent_next_day_pushes_once(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=1)

    processes = [next_day_process(project), next_day_process(project)]
    results = [finish(process) for process in processes]

    states = sorted(result["chains"][0]["state"] for _, result in results)
    assert states in (["locked", "running"], ["running", "running"]), results
    assert [code for code, _ in results] == [10, 10]
    assert kernel_versions(short_emulator) == [1]
    ledger = Ledger.open(project.folder / ".relay", "digits")
    assert [step["phase"] for step in ledger.data.steps if step["step"] == "push"] == ["begin", "end"]


@pytest.mark.slow
def test_foreign_running_version_exits_in_progress(
    tmp_path: Path, short_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from kaggle_relay.relay import chain as chains
    from kaggle_relay.relay.config import load_config

    hold = tmp_path / "hold"
    hold.touch()
    project = write_step_project(tmp_path / "p", epochs=1, once=str(hold), trouble="hold", trouble_epoch=0)
    # A second chain on the same kernel meets the first chain's running version when it pushes.
    project.append_config('\n[[chain]]\nname = "other"\nkernel = "kernel"\ndataset = "relay-tester/other-handoff"\n')
    assert chains.advance(load_config(project.config).chain[0]).state == "running"
    wait_until(lambda: short_emulator.kernels.version(KERNEL, 1)["status"] == "RUNNING", what="version 1 to run")
    capsys.readouterr()

    code = main(["next-day", "--config", str(project.config), "--chain", "other", "--json"])

    hold.unlink()
    result = json.loads(capsys.readouterr().out)
    assert code == 10
    assert result["code"] == 10
    other = result["chains"][0]
    assert other["state"] == "busy"
    assert "version 1 is running" in other["message"]
    assert kernel_versions(short_emulator) == [1]
