"""The dispatcher: exit codes, --json on failures, --debug placement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_relay.cli import exitcodes


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaggle_relay.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "code", "error_type"),
    [
        (["next-day", "--json"], exitcodes.NEEDS_ATTENTION, "ConfigError"),
        (["publish", "ckpts", "--dataset", "Owner/Bad", "--json"], exitcodes.USAGE, "ConfigError"),
        (["scan", "--metric", "val_loss", "--json"], exitcodes.USAGE, "ConfigError"),
        (["scan", "no-such-folder", "--json"], exitcodes.USAGE, "ConfigError"),
        (["scan", "--no-such-flag", "--json"], exitcodes.USAGE, "ValueError"),
    ],
)
def test_failed_command_prints_json_error(tmp_path: Path, args: list[str], code: int, error_type: str) -> None:
    result = run_cli(*args, cwd=tmp_path)

    assert result.returncode == code, result.stderr
    document = json.loads(result.stdout)
    assert document["code"] == code
    assert document["error"]["type"] == error_type
    assert document["error"]["message"]
    assert "error" in result.stderr


def test_debug_after_command_shows_traceback(tmp_path: Path) -> None:
    result = run_cli("next-day", "--debug", cwd=tmp_path)

    assert result.returncode == exitcodes.NEEDS_ATTENTION
    assert "Traceback" in result.stderr
    assert "relay.toml: not found" in result.stderr


def test_help_lists_exit_codes(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)

    assert result.returncode == 0
    assert "10  in progress" in result.stdout
