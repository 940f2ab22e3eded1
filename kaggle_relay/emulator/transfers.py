"""Blob uploads (StartBlobUpload and resumable PUTs) and file download URLs.

Uploads follow the resumable protocol the client speaks (GCS style): a
``PUT`` of the whole body completes the blob (200); the response to a probe
``PUT`` with ``Content-Range: bytes */<size>`` and no body is 200 when complete,
308 with ``Range: bytes=0-<last>`` when partial (no Range header when no
byte arrived), 404 for an unknown token; a ``PUT`` with
``Content-Range: bytes <start>-<end>/<size>`` appends from ``start``.

Download URLs (``/_emulator/files/<kind>/<owner>/<slug>/<version>/<index>/<name>``)
need no authentication, like Kaggle's signed URLs. Kinds: ``k`` a kernel
output entry, ``d`` a dataset file, ``z`` a whole dataset version as a zip.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from kaggle_relay.emulator.protocol import ApiError, now

if TYPE_CHECKING:
    from kaggle_relay.emulator.server import Emulator

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+)$")


class Uploads:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.store = emulator.store
        self.folder = self.store.data_dir / "blobs"
        self.folder.mkdir(parents=True, exist_ok=True)

    def start_blob_upload(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name") or ""
        if not name or "/" in name or name in (".", ".."):
            raise ApiError(400, f"Invalid blob name {name!r}")
        token = secrets.token_urlsafe(18)
        path = self.folder / token
        path.write_bytes(b"")
        with self.store.change():
            self.store.uploads[token] = {
                "name": name,
                "size": int(body.get("contentLength") or 0),
                "path": self.store.relative(path),
                "user": user,
                "created": now(),
                "complete": False,
            }
        return {"token": token, "createUrl": f"{self.emulator.url}/_emulator/uploads/{token}"}

    def put(
        self, token: str, content_range: str | None, body: Iterator[memoryview], keep_half: bool
    ) -> tuple[int, dict[str, str]]:
        """Store one upload PUT; return the HTTP status and headers of the response."""
        with self.store.lock:
            upload = self.store.uploads.get(token)
        if upload is None:
            for _ in body:
                pass
            return 404, {}
        path = self.store.resolve(upload["path"])
        start, probe = self._start_of(content_range, path)
        if probe:
            for _ in body:
                pass
            return self._progress(token, upload, path)

        received = self._write(path, start, body, upload["size"], keep_half)
        if keep_half:
            log.info("upload %s stopped midway by a fault after %d bytes", token, received)
            return 503, {}
        if received > upload["size"]:
            return 400, {}
        return self._progress(token, upload, path)

    @staticmethod
    def _start_of(content_range: str | None, path: Path) -> tuple[int, bool]:
        """Return (offset to write at, whether this PUT is a progress probe)."""
        if not content_range:
            return 0, False
        match = _CONTENT_RANGE.match(content_range.strip())
        if match is None:
            raise ApiError(400, f"Invalid Content-Range {content_range!r}")
        if match.group(1) is None:
            return 0, True
        start = int(match.group(1))
        if start > path.stat().st_size:
            raise ApiError(
                400,
                f"Content-Range starts at {start}, past the {path.stat().st_size} bytes received",
            )
        return start, False

    @staticmethod
    def _write(path: Path, start: int, body: Iterator[memoryview], size: int, keep_half: bool) -> int:
        limit = max(0, (size - start) // 2) if keep_half else None
        written = 0
        with open(path, "r+b") as handle:
            handle.seek(start)
            handle.truncate()
            for chunk in body:
                if limit is not None:
                    chunk = chunk[: max(0, limit - written)]
                handle.write(chunk)
                written += len(chunk)
        return start + written

    def _progress(
        self, token: str, upload: dict[str, Any], path: Path
    ) -> tuple[int, dict[str, str]]:
        received = path.stat().st_size
        if received == upload["size"]:
            if not upload["complete"]:
                with self.store.change():
                    self.store.uploads[token]["complete"] = True
            return 200, {}
        if received == 0:
            return 308, {}
        return 308, {"Range": f"bytes=0-{received - 1}"}

    def forget(self, token: str) -> None:
        """Drop an upload session and its bytes, as Kaggle does when one expires."""
        with self.store.change():
            upload = self.store.uploads.pop(token, None)
        if upload is not None:
            self.store.resolve(upload["path"]).unlink(missing_ok=True)

    def claim(self, token: str) -> tuple[str, Path]:
        """Take a completed upload for a dataset version; return (file name, blob path)."""
        upload = self.store.uploads.get(token)
        if upload is None:
            raise ApiError(400, f"Unknown or already used upload token {token[:8]}…")
        if not upload["complete"]:
            raise ApiError(400, f"Upload of {upload['name']!r} is not complete")
        del self.store.uploads[token]
        return upload["name"], self.store.resolve(upload["path"])


class Files:
    """Maps download URLs to files on disk."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._zip_lock = threading.Lock()

    def url(self, kind: str, ref: str, number: int | None, index: int, name: str) -> str:
        """Build the download URL of a file; it ends with the base name, which the client reads."""
        base_name = quote(name.replace("\\", "/").rstrip("/").split("/")[-1] or "file", safe="")
        return f"{self.emulator.url}/_emulator/files/{kind}/{quote(ref)}/{number or 0}/{index}/{base_name}"

    def path_for(self, route: str) -> Path:
        """Return the file behind ``<kind>/<owner>/<slug>/<version>/<index>/<name>``, or raise 404."""
        parts = route.split("/")[:5]
        if len(parts) != 5 or not parts[3].isdigit() or not parts[4].isdigit():
            raise ApiError(404, "No such file")
        kind, ref, number, index = parts[0], f"{parts[1]}/{parts[2]}", int(parts[3]), int(parts[4])
        if kind == "k":
            entries = self.emulator.kernels.version(ref, number).get("outputs", [])
        elif kind == "d":
            entries = self.emulator.datasets.files_of(ref, number)
        elif kind == "z":
            return self._zip_of(ref, number)
        else:
            raise ApiError(404, "No such file")
        if not 0 <= index < len(entries):
            raise ApiError(404, "No such file")
        return self.emulator.store.resolve(entries[index]["path"])

    def _zip_of(self, ref: str, number: int) -> Path:
        """Build (once) the zip of a whole dataset version, as DownloadDataset serves it."""
        store = self.emulator.store
        target = store.data_dir / "datasets" / ref / f"v{number}.zip"
        with self._zip_lock:
            if target.exists():
                return target
            partial = target.with_suffix(".zip.partial")
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
                for entry in self.emulator.datasets.files_of(ref, number):
                    bundle.write(store.resolve(entry["path"]), entry["name"])
            partial.replace(target)
        return target
