"""Install the project from pyproject.toml alone into a new virtual environment and use it.

This catches a dependency that the development environment happens to have but the
package does not declare: kaggle 2.2.x imports ``six`` at import time without declaring it,
so a missing ``six`` in our dependencies only shows up here, on the first upload.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding only kaggle-relay and what pyproject.toml declares."""
    home = tmp_path_factory.mktemp("fresh-venv")
    env_dir = home / "venv"
    venv.create(env_dir, with_pip=True)
    # Pinning torch only chooses the CPU build on this machine's disk; every package
    # still comes from the dependency list in pyproject.toml.
    constraints = home / "constraints.txt"
    constraints.write_text("torch==2.13.0\n", encoding="utf-8")
    env = {**os.environ, "PIP_CONSTRAINT": str(constraints), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO)],
        check=True,
        env=env,
        timeout=900,
    )
    return env_dir


def test_installed_package_imports_kaggle(fresh_env: Path) -> None:
    probe = "import kaggle.api.kaggle_api_extended, six, torch, pydantic, tenacity; print('ok')"
    env = {**os.environ, "KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "0" * 32}
    result = subprocess.run(
        [str(fresh_env / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_installed_package_publishes_to_emulator(
    fresh_env: Path, emulator, tmp_path: Path
) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    writer = (
        "import sys, torch\n"
        "from kaggle_relay.runtime.save import save_checkpoint\n"
        "save_checkpoint({'model': {'w': torch.ones(3)}}, 'ckpt-step000010.pt',"
        " folder=sys.argv[1], epoch=1, step=10, metrics={'val_loss': 0.5})\n"
    )
    subprocess.run([str(fresh_env / "bin" / "python"), "-c", writer, str(folder)], check=True, timeout=300)

    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    from tests.conftest import EMULATOR_KEY as key
    from tests.conftest import EMULATOR_USER as user

    (config_dir / "kaggle.json").write_text(json.dumps({"username": user, "key": key}), encoding="utf-8")
    env = {
        **os.environ,
        "KAGGLE_CONFIG_DIR": str(config_dir),
        "KAGGLE_RELAY_API_ENDPOINT": emulator.url,
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [
            str(fresh_env / "bin" / "kaggle-relay"),
            "publish",
            str(folder),
            "--dataset",
            f"{user}/packaging-check",
            "--metric",
            "val_loss",
            "--mode",
            "min",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    published = json.loads(result.stdout)
    assert "ckpt-step000010.pt" in published["files"]
