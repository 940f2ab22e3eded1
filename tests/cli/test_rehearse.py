"""`kaggle-relay rehearse`: the whole loop offline, on an emulator it starts, in a copy of the project."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from kaggle_relay.cli.main import main
from tests.relay.chainkit import write_step_project

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _rehearsal_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the rehearsal folders inside the test's folder, where the tests look for leftovers."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def rehearsal_folders(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("kaggle-relay-rehearsal-*"))


def test_default_rehearsal_of_template_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "p"), "--owner", "relay-tester", "--slug", "relay-chain-test", "--json"]) == 0
    capsys.readouterr()

    code = main(["rehearse", "--dir", str(tmp_path / "p"), "--json"])

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0, captured.err
    chain = report["chains"][0]
    assert chain["state"] == "done"
    assert len(chain["days"]) >= 2
    assert chain["days"][-1]["epochs"][-1] == 11
    assert report["warnings"] == []
    assert "warning" not in captured.err
    assert report["work_dir"] is None
    assert rehearsal_folders(tmp_path) == []
    # The user's script is untouched: only the rehearsal copy got the epoch floor.
    assert "MIN_EPOCH_SECONDS = 0.0" in (tmp_path / "p" / "kernel" / "train.py").read_text(encoding="utf-8")


def test_single_session_rehearsal_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_step_project(tmp_path / "p", epochs=1)
    capsys.readouterr()

    code = main(["rehearse", "--dir", str(project.folder), "--session-limit", "15", "--keep", "--json"])

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0, report
    chain = report["chains"][0]
    assert chain["state"] == "done"
    assert [day["epochs"] for day in chain["days"]] == [[0, 0]]
    assert [day["dataset_version"] for day in chain["days"]] == [1]
    assert "no resume was exercised" in report["warnings"][0]
    assert "--session-limit" in report["warnings"][0]
    assert "warning: chain digits finished in one session" in captured.err
    assert not (project.folder / ".relay").exists()
    assert rehearsal_folders(tmp_path) == [Path(report["work_dir"])]
    assert f"rehearsal folder kept at {report['work_dir']}" in captured.err
    assert Path(report["work_dir"], "project", ".relay", "digits.json").is_file()


def test_rehearse_without_project_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rehearse", "--dir", str(tmp_path)])

    assert code == 4
    assert "kaggle-relay init" in capsys.readouterr().err
