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
    """Keep the rehearsal folders, which rehearse leaves for inspection, inside the test's folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_rehearse_runs_project_copy_to_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    capsys.readouterr()

    code = main(["rehearse", "--dir", str(project.folder), "--session-limit", "15", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    chain = report["chains"][0]
    assert chain["state"] == "done"
    assert [day["epochs"] for day in chain["days"]] == [[0, 0], [1, 1]]
    assert [day["dataset_version"] for day in chain["days"]] == [1, 2]
    assert not (project.folder / ".relay").exists()
    assert Path(report["work_dir"], "project", ".relay", "digits.json").is_file()


def test_rehearse_without_project_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rehearse", "--dir", str(tmp_path)])

    assert code == 4
    assert "kaggle-relay init" in capsys.readouterr().err
