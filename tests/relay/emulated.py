"""Fixtures for relay tests that talk to the emulator through ``client.connect``.

Import the fixtures into a test module (``from tests.relay.emulated import relay_api``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.relay import client, retry
from tests.conftest import EMULATOR_KEY, EMULATOR_USER

USER = EMULATOR_USER


@pytest.fixture
def relay_api(emulator: Any, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The relay's own authenticated client, connected to ``emulator`` through the endpoint seam."""
    path = _isolated_kaggle_config / "kaggle.json"
    path.write_text(json.dumps({"username": EMULATOR_USER, "key": EMULATOR_KEY}), encoding="utf-8")
    path.chmod(0o600)
    monkeypatch.setenv("KAGGLE_RELAY_API_ENDPOINT", emulator.url)
    # tempfile caches its folder per process; the client keeps upload state there.
    monkeypatch.setattr(tempfile, "tempdir", str(_isolated_kaggle_config))
    # Same retry rules, shorter waits, so fault tests take milliseconds.
    for kind, policy in retry.DEFAULT_POLICIES.items():
        fast = policy.model_copy(update={"initial_seconds": 0.02, "max_seconds": 0.1})
        monkeypatch.setitem(retry.DEFAULT_POLICIES, kind, fast)
    client.forget_clients()
    try:
        yield client.connect(timeout=(5.0, 30.0))
    finally:
        client.forget_clients()


def script_kernel(root: Path, slug: str, code: str, **metadata: Any) -> Path:
    """Write a script kernel folder owned by the emulator's user."""
    folder = root / f"kernel-{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(code, encoding="utf-8")
    meta: dict[str, Any] = {
        "id": f"{USER}/{slug}",
        "title": slug.replace("-", " ").title(),
        "code_file": "main.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": False,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [],
    }
    meta.update(metadata)
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return folder
