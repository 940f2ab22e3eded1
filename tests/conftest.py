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


# --- Kaggle API emulator (tests/emulator owns this section) -----------------

EMULATOR_USER = "relay-tester"
EMULATOR_KEY = "relay-tester-key"
EMULATOR_TOKEN = "KGAT_relay-tester-token"


@pytest.fixture
def emulator(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A started emulator on 127.0.0.1 (free port) with a temporary data folder.

    Attributes: ``url``, ``faults`` (fault handle), ``data_dir``, ``config``,
    ``add_output(kernel, version, name, data)``. Short limits keep tests
    fast: 60 s sessions, 1 s kill grace, 0.5 s dataset processing. The user
    is ``relay-tester`` with key ``relay-tester-key`` and access token
    ``KGAT_relay-tester-token``. It stops (killing its runs) at teardown.
    """
    from kaggle_relay.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(
        data_dir=tmp_path_factory.mktemp("emulator-data"),
        session_limit=60.0,
        kill_grace=1.0,
        processing_delay=0.5,
        users={EMULATOR_USER: EMULATOR_KEY},
        tokens={EMULATOR_TOKEN: EMULATOR_USER},
    )
    server = Emulator(config).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kaggle_api(emulator, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A real, authenticated ``KaggleApi`` whose every call goes to ``emulator``.

    Credentials are a throwaway ``kaggle.json`` in the test's KAGGLE_CONFIG_DIR.
    ``tempfile`` caches the temporary folder once per process, so it is reset
    here too: the client keeps resumable-upload state there.
    """
    import json
    import tempfile

    from kaggle_relay.relay.endpoint import create_api

    credentials = _isolated_kaggle_config / "kaggle.json"
    credentials.write_text(json.dumps({"username": EMULATOR_USER, "key": EMULATOR_KEY}))
    credentials.chmod(0o600)
    monkeypatch.setattr(tempfile, "tempdir", str(_isolated_kaggle_config))
    return create_api(emulator.url, authenticate=True)
