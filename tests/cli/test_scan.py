"""`kaggle-relay scan` as a user runs it: a real subprocess on a Kaggle-shaped tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_relay.cli import exitcodes
from tests.runtime.builders import cut, save_safetensors, tiny_state, training_checkpoint

# Runs the CLI in-process, then reports which heavy packages it imported.
_WRAPPER = """
import json, sys
from kaggle_relay.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "kaggle", "kagglesdk", "numpy"))
print(json.dumps({"exit": code, "heavy": heavy}), file=sys.stderr)
"""


def _run(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAGGLE_RELAY_KAGGLE_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-c", _WRAPPER, "scan", *args], capture_output=True, text=True, env=env, check=False
    )


def _imports(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    report: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return report


@pytest.fixture
def tree(kaggle_root: Path) -> Path:
    folder = kaggle_root / "working" / "checkpoints"
    training_checkpoint(folder / "ckpt-step10.pt", step=10, val_loss=0.4)
    training_checkpoint(folder / "ckpt-step20.pt", step=20, val_loss=0.3)
    cut(training_checkpoint(folder / "ckpt-step30.pt", step=30, val_loss=0.1), 0.5)
    save_safetensors(kaggle_root / "input" / "datasets" / "ann" / "w" / "model.safetensors", tiny_state())
    return kaggle_root


@pytest.mark.slow
def test_scan_json_never_imports_torch(tree: Path) -> None:
    result = _run("--json", "--metric", "val_loss", "--mode", "min", root=tree)
    assert _imports(result) == {"exit": 0, "heavy": []}
    payload = json.loads(result.stdout)
    assert set(payload) == {"selected", "candidates"}
    assert payload["selected"]["step"] == 20
    assert len(payload["candidates"]) == 4
    for field in ("path", "source", "format", "bytes", "valid", "reason", "epoch", "step", "metrics"):
        assert field in payload["selected"]


@pytest.mark.slow
def test_scan_exits_3_without_valid_checkpoint(kaggle_root: Path) -> None:
    (kaggle_root / "working" / "ckpt-step1.pt").touch()
    result = _run("--show-invalid", root=kaggle_root)
    assert _imports(result)["exit"] == exitcodes.NO_VALID_CHECKPOINT
    assert "empty (0 bytes)" in result.stdout
    assert "no valid checkpoint selected" in result.stdout


@pytest.mark.slow
def test_scan_metric_without_mode_is_usage_error(tree: Path) -> None:
    result = _run("--metric", "val_loss", root=tree)
    assert _imports(result)["exit"] == exitcodes.USAGE
    assert "--mode min" in result.stderr


@pytest.mark.slow
def test_scan_console_script_with_root(tree: Path) -> None:
    script = Path(sys.executable).with_name("kaggle-relay")
    result = subprocess.run(
        [str(script), "scan", str(tree / "working"), "--require-key", "optimizer"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ckpt-step20.pt" in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_scan_help_documents_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kaggle_relay.cli.main", "scan", "--help"], capture_output=True, text=True, check=True
    )
    assert "3   no valid checkpoint was found" in result.stdout
