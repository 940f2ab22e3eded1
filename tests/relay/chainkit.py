"""Helpers for chain tests: a short-session emulator and a project written by `kaggle-relay init`."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

OWNER = "relay-tester"
KEY = "relay-tester-key"
SESSION_LIMIT = 12.0


@dataclass
class Project:
    folder: Path
    config: Path

    @property
    def script(self) -> Path:
        return self.folder / "kernel" / "train.py"

    def edit_script(self, **constants: object) -> None:
        """Set module-level constants of the template training script (``EPOCHS=3``)."""
        text = self.script.read_text(encoding="utf-8")
        for name, value in constants.items():
            text, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.MULTILINE)
            assert count == 1, name
        self.script.write_text(text, encoding="utf-8")

    def append_config(self, text: str) -> None:
        with self.config.open("a", encoding="utf-8") as handle:
            handle.write(text)


def write_project(folder: Path, *, epochs: int = 6, epoch_seconds: float = 3.0) -> Project:
    """Write the template project for the emulator user, with a short training run."""
    from kaggle_relay.cli.main import main

    assert main(["init", str(folder), "--owner", OWNER, "--slug", "relay-chain-test", "--json"]) == 0
    project = Project(folder=folder, config=folder / "relay.toml")
    project.edit_script(EPOCHS=epochs, MIN_EPOCH_SECONDS=epoch_seconds)
    text = project.config.read_text(encoding="utf-8")
    text = text.replace("poll_seconds = 60 ", "poll_seconds = 0.5").replace("dataset_ready_seconds = 900", "dataset_ready_seconds = 60")
    project.config.write_text(text, encoding="utf-8")
    return project


@pytest.fixture
def short_emulator(tmp_path_factory: pytest.TempPathFactory, _isolated_kaggle_config: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An emulator with 12 s sessions, credentials for it, and KAGGLE_RELAY_API_ENDPOINT set."""
    from kaggle_relay.emulator import Emulator, EmulatorConfig
    from kaggle_relay.relay import client

    config = EmulatorConfig(
        data_dir=tmp_path_factory.mktemp("emulator-data"), session_limit=SESSION_LIMIT, kill_grace=1.0,
        processing_delay=0.3, users={OWNER: KEY},
    )
    credentials = _isolated_kaggle_config / "kaggle.json"
    credentials.write_text(json.dumps({"username": OWNER, "key": KEY}))
    credentials.chmod(0o600)
    monkeypatch.setattr(tempfile, "tempdir", str(_isolated_kaggle_config))
    server = Emulator(config).start()
    monkeypatch.setenv("KAGGLE_RELAY_API_ENDPOINT", server.url)
    client.forget_clients()
    try:
        yield server
    finally:
        server.stop()
        client.forget_clients()
