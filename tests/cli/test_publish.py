"""``kaggle-relay publish`` as a real subprocess against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from kaggle_relay.cli import exitcodes
from kaggle_relay.runtime.save import save_checkpoint
from tests.conftest import EMULATOR_KEY, EMULATOR_USER

DATASET = f"{EMULATOR_USER}/relay-handoff"


def relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaggle_relay.cli.main", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def checkpoint_folder(root: Path) -> Path:
    folder = root / "checkpoints"
    for step in (100, 200):
        save_checkpoint({"model": {"w": torch.ones(2) * step}}, f"ckpt-step{step:06d}.pt", folder=folder,
                        step=step, metrics={"val_acc": step / 1000})  # fmt: skip
    return folder


def with_credentials(config: Path, emulator: Any) -> dict[str, str]:
    path = config / "kaggle.json"
    path.write_text(json.dumps({"username": EMULATOR_USER, "key": EMULATOR_KEY}), encoding="utf-8")
    path.chmod(0o600)
    return {"KAGGLE_RELAY_API_ENDPOINT": emulator.url}


def test_publish_json_prints_the_ready_version(emulator: Any, _isolated_kaggle_config: Path, tmp_path: Path) -> None:
    env = with_credentials(_isolated_kaggle_config, emulator)
    result = relay("publish", str(checkpoint_folder(tmp_path)), "--dataset", DATASET, "--metric", "val_acc",
                   "--mode", "max", "--timeout", "60", "--json", env=env)  # fmt: skip
    assert result.returncode == exitcodes.OK, result.stderr
    data = json.loads(result.stdout)
    assert data["dataset"] == f"{DATASET}/1"
    assert sorted(data["files"]) == ["ckpt-step000200.pt", "relay-manifest.json"]
    assert data["checkpoint"]["step"] == 200


def test_publish_rerun_reuses_the_version(emulator: Any, _isolated_kaggle_config: Path, tmp_path: Path) -> None:
    env = with_credentials(_isolated_kaggle_config, emulator)
    folder = str(checkpoint_folder(tmp_path))
    first = relay("publish", folder, "--dataset", DATASET, "--timeout", "60", "--json", env=env)
    second = relay("publish", folder, "--dataset", DATASET, "--timeout", "60", "--json", env=env)
    assert first.returncode == second.returncode == exitcodes.OK, second.stderr
    assert json.loads(second.stdout)["reused"] is True
    assert json.loads(second.stdout)["version"] == 1


def test_publish_human_output(emulator: Any, _isolated_kaggle_config: Path, tmp_path: Path) -> None:
    env = with_credentials(_isolated_kaggle_config, emulator)
    result = relay("publish", str(checkpoint_folder(tmp_path)), "--dataset", DATASET, "--timeout", "60", env=env)
    assert result.returncode == exitcodes.OK, result.stderr
    assert f"published {DATASET}/1" in result.stdout


def test_publish_without_credentials_is_one_clear_error(tmp_path: Path) -> None:
    result = relay("publish", str(checkpoint_folder(tmp_path)), "--dataset", DATASET, "--json")
    assert result.returncode == exitcodes.CREDENTIALS
    assert json.loads(result.stdout)["error"]["type"] == "CredentialsError"
    assert "KAGGLE_USERNAME" in result.stderr
    assert "KAGGLE_API_TOKEN" in result.stderr
    assert "kaggle auth login" in result.stderr
    assert "https://www.kaggle.com" not in result.stderr


def test_publish_without_valid_checkpoint_exits_3(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "ckpt-step000100.pt").write_bytes(b"truncated")
    result = relay("publish", str(folder), "--dataset", DATASET, "--json")
    assert result.returncode == exitcodes.NO_VALID_CHECKPOINT
    assert json.loads(result.stdout)["error"]["type"] == "NoValidCheckpointError"
    assert "ckpt-step000100.pt" in result.stderr


def test_publish_rejects_invalid_dataset_slug(tmp_path: Path) -> None:
    result = relay("publish", str(checkpoint_folder(tmp_path)), "--dataset", f"{EMULATOR_USER}/Relay Handoff")
    assert result.returncode == exitcodes.USAGE
    assert "lowercase" in result.stderr


def test_publish_help_documents_exit_codes() -> None:
    result = relay("publish", "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout
    assert "--carry" in result.stdout
