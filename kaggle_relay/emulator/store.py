"""The emulator's persistent state: kernels, versions, datasets and uploads.

Everything lives in ``<data>/state.json``, rewritten atomically after each
change, so a restarted server sees what the previous one saved. File
contents live beside it: uploaded blobs in ``blobs/``, dataset versions in
``datasets/<owner>/<slug>/v<N>/``, kernel runs in
``runs/<owner>/<slug>/v<N>/``. Paths inside the state are relative to the
data folder. Sample (abridged)::

    {"schema": 1, "next_id": 3,
     "kernels": {"alice/train-day": {"id": 1, "owner": "alice", "slug": "train-day",
                  "versions": [{"number": 1, "status": "COMPLETE", "outputs": [...]}]}},
     "datasets": {"alice/handoff": {"id": 2, "versions": [{"number": 1, "ready_at": 1.7e9,
                  "failed": false, "files": [{"name": "a.pt", "path": "...", "size": 3}]}]}},
     "uploads": {"<token>": {"name": "a.pt", "size": 3, "path": "blobs/<token>", "complete": true}}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kaggle_relay.runtime.atomic import write_text

log = logging.getLogger(__name__)

SCHEMA = 1


class Store:
    """The state dictionary, one lock, and atomic saves."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "state.json"
        self.lock = threading.RLock()
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"schema": SCHEMA, "next_id": 1, "kernels": {}, "datasets": {}, "uploads": {}}
        state: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        if state.get("schema") != SCHEMA:
            raise ValueError(f"{self.path}: unknown emulator state schema {state.get('schema')!r}")
        return state

    @contextlib.contextmanager
    def change(self) -> Iterator[dict[str, Any]]:
        """Hold the lock while the caller edits the state, then save it."""
        with self.lock:
            yield self.state
            self.save()

    def save(self) -> None:
        with self.lock:
            write_text(self.path, json.dumps(self.state, indent=1, sort_keys=True))

    def new_id(self) -> int:
        with self.lock:
            value = int(self.state["next_id"])
            self.state["next_id"] = value + 1
            return value

    def resolve(self, relative: str) -> Path:
        return self.data_dir / relative

    def relative(self, path: Path) -> str:
        return path.relative_to(self.data_dir).as_posix()

    @property
    def kernels(self) -> dict[str, Any]:
        kernels: dict[str, Any] = self.state["kernels"]
        return kernels

    @property
    def datasets(self) -> dict[str, Any]:
        datasets: dict[str, Any] = self.state["datasets"]
        return datasets

    @property
    def uploads(self) -> dict[str, Any]:
        uploads: dict[str, Any] = self.state["uploads"]
        return uploads
