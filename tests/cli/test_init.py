"""`kaggle-relay init`: a ready project from the templates, no overwrite without --force, templates in the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from kaggle_relay.cli import exitcodes, init
from kaggle_relay.cli.main import main
from kaggle_relay.relay.config import load_config

REPO = Path(__file__).resolve().parents[2]


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

    assert code == exitcodes.USAGE
    assert "slug" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_init_templates_exist_in_checkout() -> None:
    folder = init.templates_dir()

    for name in init.FILES:
        assert (folder / name).is_file(), name


def test_packaging_lists_every_package() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "kaggle_relay").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }

    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"


@pytest.mark.slow
def test_wheel_ships_templates(tmp_path: Path) -> None:
    # Build from a copy, because setuptools writes its build/ folder into the source tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("kaggle_relay", "templates"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("kaggle_relay-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())

    for name in init.FILES:
        assert f"kaggle_relay/templates/{name}" in names, name
    assert "kaggle_relay/cli/init.py" in names


def test_generated_project_runs_without_venv_on_path(tmp_path: Path) -> None:
    project = tmp_path / "p"
    # A real `kaggle-relay init` from the installed entry point, as the README shows it.
    command = Path(sys.executable).parent / "kaggle-relay"
    result = subprocess.run([str(command), "init", str(project)], capture_output=True, text=True, timeout=60,
                            check=True)
    plain = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}

    assert f"cd {project} && {command} rehearse" in result.stdout
    made = subprocess.run(["make", "status"], cwd=project, env=plain, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "digits: idle, day 0" in made.stdout
    assert f"&& {command} next-day" in (project / "cron.txt").read_text(encoding="utf-8")
    assert f"ExecStart={command} next-day" in (project / "kaggle-relay.service").read_text(encoding="utf-8")
