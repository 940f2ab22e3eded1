"""Files the relay writes for the kaggle client read the same under any locale encoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from kaggle_relay.runtime.save import save_checkpoint
from tests.conftest import EMULATOR_KEY, EMULATOR_USER

DATASET = f"{EMULATOR_USER}/relay-handoff"

ASCII_LOCALE_PUBLISH = """
import sys
from pathlib import Path
from kaggle_relay.relay import client, publish
from kaggle_relay.relay.refs import DatasetRef

api = client.connect()
result = publish.publish_checkpoints(
    api, Path(sys.argv[1]), DatasetRef.parse(sys.argv[2]), run_id="run-1", timeout=60,
    title="Poids du modèle", handoff_note="jour 1 — prêt",
)
print(result.dataset)
"""


def test_publish_under_ascii_locale_keeps_non_ascii_title(
    tmp_path: Path, emulator: Any, _isolated_kaggle_config: Path
) -> None:
    credentials = _isolated_kaggle_config / "kaggle.json"
    credentials.write_text(json.dumps({"username": EMULATOR_USER, "key": EMULATOR_KEY}), encoding="utf-8")
    credentials.chmod(0o600)
    # Without UTF-8 mode and locale coercion, open() without an encoding reads and writes ASCII.
    env = {
        **os.environ,
        "KAGGLE_RELAY_API_ENDPOINT": emulator.url,
        "LC_ALL": "C",
        "LANG": "C",
        "PYTHONUTF8": "0",
        "PYTHONCOERCECLOCALE": "0",
    }
    folder = tmp_path / "checkpoints"
    save_checkpoint({"model": {"w": torch.ones(2)}}, "ckpt-step000100.pt", folder=folder, step=100)
    script = tmp_path / "publish_script.py"
    script.write_text(ASCII_LOCALE_PUBLISH, encoding="utf-8")

    result = subprocess.run(
        [sys.executable, str(script), str(folder), DATASET], capture_output=True, text=True, timeout=120, env=env
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{DATASET}/1"
    assert emulator.store.datasets[DATASET]["title"] == "Poids du modèle"
