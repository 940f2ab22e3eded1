"""The ledger: atomic records, the step journal, the chain lock and the log file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_relay.errors import ChainLockedError, ConfigError
from kaggle_relay.relay.ledger import Ledger, Run, chain_lock, chain_log, ledger_path, list_chains


def test_new_ledger_starts_idle(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / ".relay", "digits")

    assert ledger.state == "idle"
    assert ledger.runs == []
    assert ledger.days == 0
    assert not ledger.path.exists()


def test_ledger_round_trips_through_disk(tmp_path: Path) -> None:
    state_dir = tmp_path / ".relay"
    ledger = Ledger.open(state_dir, "digits")
    ledger.runs.append(Run(day=1, run_id="d001-x", kernel_version=1, pushed_at="2026-12-04T20:00:00.000Z"))
    ledger.set_state("running")

    again = Ledger.open(state_dir, "digits")

    assert again.state == "running"
    assert again.runs[0].run_id == "d001-x"
    assert again.days == 1
    assert json.loads(ledger_path(state_dir, "digits").read_text())["schema"] == 1


def test_step_without_end_is_reported_open(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, "digits")
    ledger.begin("push", run_id="d001-x")

    assert Ledger.open(tmp_path, "digits").open_step() == ledger.data.steps[-1]

    ledger.end("push", run_id="d001-x", kernel_version=1)
    assert Ledger.open(tmp_path, "digits").open_step() is None


def test_ledger_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, "digits")
    for index in range(5):
        ledger.begin("poll", index=index)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits.json"]


def test_corrupt_ledger_raises_config_error_with_hint(tmp_path: Path) -> None:
    ledger_path(tmp_path, "digits").write_text("{not json", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        Ledger.open(tmp_path, "digits")

    assert "digits.json" in str(caught.value)
    assert "delete it" in caught.value.hint


def test_fail_records_error_and_state(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, "digits")
    ledger.fail("no valid checkpoint after 2 runs", hint="fix train.py", run_id="d002-x")

    again = Ledger.open(tmp_path, "digits")
    assert again.state == "failed"
    assert again.data.error is not None
    assert again.data.error.hint == "fix train.py"


def test_list_chains_names_each_ledger(tmp_path: Path) -> None:
    Ledger.open(tmp_path, "a").save()
    Ledger.open(tmp_path, "b").save()

    assert list_chains(tmp_path) == ["a", "b"]


def test_chain_lock_rejects_second_holder_in_process(tmp_path: Path) -> None:
    with chain_lock(tmp_path, "digits"), pytest.raises(ChainLockedError) as caught, chain_lock(tmp_path, "digits"):
        pass

    assert caught.value.chain == "digits"


def test_chain_lock_rejects_holder_in_other_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from kaggle_relay.relay.ledger import chain_lock\n"
            f"with chain_lock(Path({str(tmp_path)!r}), 'digits'):\n"
            "    print('locked', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ChainLockedError), chain_lock(tmp_path, "digits"):
            pass
    finally:
        holder.communicate("\n", timeout=30)

    with chain_lock(tmp_path, "digits"):
        pass


def test_lock_of_killed_process_is_released(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from kaggle_relay.relay.ledger import chain_lock\n"
            f"with chain_lock(Path({str(tmp_path)!r}), 'digits'):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=30)
    holder.stdout.close()

    with chain_lock(tmp_path, "digits"):
        pass


def test_chain_log_writes_relay_messages_to_file(tmp_path: Path) -> None:
    with chain_log(tmp_path, "digits") as path:
        logging.getLogger("kaggle_relay.relay.chain").info("pushed version %d", 3)

    assert "pushed version 3" in path.read_text(encoding="utf-8")
    assert "[digits]" in path.read_text(encoding="utf-8")
