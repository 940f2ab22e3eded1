"""`kaggle-relay next-day`: exit codes for cron, quota refusal, bad config, missing credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_relay.cli.main import main
from kaggle_relay.relay.ledger import Ledger
from tests.relay.chainkit import short_emulator, write_project

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
