"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def kaggle_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Kaggle-shaped tree (working/ and input/) that the runtime treats as /kaggle."""
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    (root / "input").mkdir()
    monkeypatch.setenv("KAGGLE_RELAY_KAGGLE_ROOT", str(root))
    return root


@pytest.fixture(autouse=True)
def _isolated_kaggle_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from the real ~/.kaggle: throwaway config dir, no inherited credentials."""
    config = tmp_path_factory.mktemp("kaggle-config")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_RELAY_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    # The kaggle client keeps resumable-upload state under TMPDIR; isolate it per test.
    monkeypatch.setenv("TMPDIR", str(config))
    monkeypatch.setenv("HOME", str(config))
    monkeypatch.delenv("KAGGLE_RELAY_KAGGLE_ROOT", raising=False)
    return config
