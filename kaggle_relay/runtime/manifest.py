"""The checkpoint manifest: ``relay-manifest.json`` beside the checkpoints.

It is the handoff contract between sessions. The kernel writes it (always
atomically) each time it saves or prunes a checkpoint; the relay and the next
session read it. File paths are relative to the manifest's folder, so a
manifest read from /kaggle/input in the next session still points at the
right files. "Newest" is decided by ``step`` (then ``created``), never by
file modification times, which copies and mounts do not preserve.

Schema version 1, a sample::

    {
      "schema": 1,
      "run_id": "20261204-203341-9f2c",
      "done": false,
      "updated": "2026-12-04T20:33:41.000Z",
      "handoff": {"dataset": "alice/relay-handoff", "version": 3, "run_id": "..."},
      "files": [
        {"file": "ckpt-step000200.pt", "bytes": 18231, "sha256": "ab…",
         "format": "torch-zip", "epoch": 2, "step": 200,
         "metrics": {"val_loss": 0.31}, "created": "2026-12-04T20:40:02.120Z",
         "run_id": "20261204-203341-9f2c", "compact": false}
      ],
      "events": [
        {"time": "…", "kind": "prune", "file": "ckpt-step000100.pt",
         "reason": "keep newest 2; not the best by val_loss"}
      ]
    }

``handoff`` is present only in manifests the relay published; it names the
dataset version the files came from. ``events`` records decisions a person
may ask about later (prunes, a weights-only resume, a refused save).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaggle_relay.errors import ManifestError
from kaggle_relay.runtime import atomic

MANIFEST_NAME = "relay-manifest.json"
SCHEMA_VERSION = 1
_HASH_CHUNK = 1 << 20


def utc_now() -> str:
    """Return the current UTC time in the ISO form Kaggle uses."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ManifestEntry:
    """One checkpoint file recorded in a manifest."""

    file: str
    bytes: int
    sha256: str
    format: str = ""
    epoch: int | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    created: str = ""
    run_id: str = ""
    compact: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    def sort_key(self) -> tuple[int, str]:
        """Order by training progress: step first, creation time to break ties."""
        return (self.step if self.step is not None else -1, self.created)


@dataclass
class Manifest:
    """The manifest of one checkpoint folder."""

    folder: Path
    run_id: str = ""
    done: bool = False
    updated: str = ""
    handoff: dict[str, Any] | None = None
    files: list[ManifestEntry] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def entry(self, file: str) -> ManifestEntry | None:
        for item in self.files:
            if item.file == file:
                return item
        return None

    def upsert(self, new: ManifestEntry) -> None:
        self.files = [item for item in self.files if item.file != new.file]
        self.files.append(new)
        self.files.sort(key=ManifestEntry.sort_key)

    def remove(self, file: str) -> None:
        self.files = [item for item in self.files if item.file != file]

    def record_event(self, kind: str, **details: Any) -> None:
        self.events.append({"time": utc_now(), "kind": kind, **details})

    def newest(self) -> ManifestEntry | None:
        return max(self.files, key=ManifestEntry.sort_key, default=None)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "run_id": self.run_id,
            "done": self.done,
            "updated": self.updated,
        }
        if self.handoff is not None:
            data["handoff"] = self.handoff
        data["files"] = [asdict(item) for item in self.files]
        data["events"] = self.events
        return data

    def save(self) -> None:
        """Write the manifest atomically; readers see the old or the new one, never a mix."""
        self.updated = utc_now()
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        atomic.write_text(self.path, text)


def load_manifest(folder: str | os.PathLike[str]) -> Manifest | None:
    """Read the manifest in ``folder``; None when there is none.

    Raises ManifestError for a file that exists but cannot be used, because
    silently ignoring it would also ignore the hashes it protects.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(str(path), f"not valid JSON ({exc}); delete it or restore it") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files", []), list):
        raise ManifestError(str(path), "not a kaggle-relay manifest (no 'files' list)")
    schema = data.get("schema", SCHEMA_VERSION)
    if schema > SCHEMA_VERSION:
        raise ManifestError(
            str(path), f"schema {schema} is newer than this runtime ({SCHEMA_VERSION}); upgrade kaggle-relay"
        )
    return Manifest(
        folder=folder,
        run_id=str(data.get("run_id", "")),
        done=bool(data.get("done", False)),
        updated=str(data.get("updated", "")),
        handoff=data.get("handoff"),
        files=[ManifestEntry.from_dict(item) for item in data.get("files", [])],
        events=list(data.get("events", [])),
    )


def load_or_new(folder: str | os.PathLike[str], *, run_id: str = "") -> Manifest:
    found = load_manifest(folder)
    if found is not None:
        return found
    return Manifest(folder=Path(folder), run_id=run_id)
