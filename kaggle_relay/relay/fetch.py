"""Stream one download URL to a file, hashing the bytes as they arrive.

A checkpoint is gigabytes, and a sha256 pass over a gigabyte costs about as
long as the download itself on loopback, so the hash runs in a second thread
on the chunks the download has just written, never in a later pass over the
file. The digest is recorded for the validator (``validate.remember_sha256``),
which then checks the manifest's sha256 without reading the file again.

The file is written without fsync, because it is a copy of bytes that stay
on Kaggle and waiting for the disk would halve the download rate here. A
checkpoint cut short by a power loss fails the manifest check in the next
process, which hashes it again, and is not published.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.validate import remember_sha256

CHUNK = 1 << 20
#: Chunks waiting for the hash thread. It bounds the memory of a download to about this many MiB.
QUEUE_CHUNKS = 8


@dataclass(frozen=True)
class Fetched:
    """A downloaded file, its size and its sha256."""

    path: Path
    size: int
    sha256: str


class _Hasher:
    """Hash chunks in a thread; hashlib releases the interpreter lock for large buffers."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._run, name="relay-fetch-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self.digest.update(chunk)

    def add(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def finish(self) -> str:
        self._chunks.put(None)
        self._thread.join()
        return self.digest.hexdigest()


def fetch(
    session: requests.Session,
    url: str,
    target: Path,
    *,
    name: str,
    advance: Callable[[int], None] = lambda _: None,
) -> Fetched:
    """GET ``url`` into ``target`` (replaced only when the whole body arrived); return its size and sha256.

    Sends through ``session.send``, which, unlike ``session.get``, does not
    attach the session's Kaggle credentials: they must not go to a signed
    download URL. Raises requests.ConnectionError when fewer bytes arrive than
    the Content-Length announced, so the caller's retry policy applies.
    """
    prepared = requests.Request("GET", url).prepare()
    hasher = _Hasher()
    written = 0
    try:
        with session.send(prepared, stream=True) as response:
            response.raise_for_status()
            expected = response.headers.get("Content-Length")
            with atomic.atomic_write(target, "wb", durable=False) as handle:
                for chunk in response.iter_content(CHUNK):
                    hasher.add(chunk)
                    handle.write(chunk)
                    written += len(chunk)
                    advance(len(chunk))
                if expected is not None and written != int(expected):
                    raise requests.ConnectionError(f"{name}: received {written} of {expected} bytes; the download was cut")
    finally:
        digest = hasher.finish()
    remember_sha256(target, digest)
    return Fetched(target, written, digest)
