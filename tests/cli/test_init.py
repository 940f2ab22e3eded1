"""`kaggle-relay init`: a ready project from the templates, and no overwrite without --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_relay.cli.main import main
from kaggle_relay.relay.config import load_config


def test_init_writes_loadable_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["init", str(tmp_path / "p"), "--owner", "alice", "--slug", "digits-train",
                 "--accelerator", "NvidiaTeslaT4", "--json"])

    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert "kernel/train.py" in result["files"]
    config = load_config(tmp_path / "p" / "relay.toml")
    assert config.chain[0].dataset == "alice/digits-train-handoff"
    assert config.chain[0].accelerator == "NvidiaTeslaT4"
    metadata = json.loads((tmp_path / "p" / "kernel" / "kernel-metadata.json").read_text(encoding="utf-8"))
    assert metadata["id"] == "alice/digits-train"
    assert metadata["title"] == "digits train"
    assert metadata["enable_gpu"] is True
    assert metadata["machine_shape"] == "NvidiaTeslaT4"
    assert str(tmp_path / "p") in (tmp_path / "p" / "cron.txt").read_text(encoding="utf-8")


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "relay.toml").write_text("# mine\n", encoding="utf-8")

    code = main(["init", str(folder)])

    assert code == 4
    assert "relay.toml" in capsys.readouterr().err
    assert (folder / "relay.toml").read_text(encoding="utf-8") == "# mine\n"
    assert not (folder / "kernel").exists()


def test_init_force_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "relay.toml").write_text("# mine\n", encoding="utf-8")

    assert main(["init", str(folder), "--force", "--json"]) == 0
    assert "[[chain]]" in (folder / "relay.toml").read_text(encoding="utf-8")


def test_init_rejects_bad_slug(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["init", str(tmp_path / "p"), "--slug", "Bad Slug"])

    assert code == 4
    assert "slug" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
