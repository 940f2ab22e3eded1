"""Stream one download URL to a file, hashing the bytes as they arrive.

A sha256 pass over a checkpoint of a gigabyte takes longer than its download
over loopback, so the hash runs in a second thread on each chunk just
written, never in a later pass over the file. The digest is recorded for the
validator (``validate.remember_sha256``), which then checks the manifest's
sha256 without reading the file again, and for the upload, which then sends
the file without hashing it again.

The file is written without fsync. It is a copy of bytes that stay on
Kaggle, and waiting for this disk (about 2 s per GiB with fsync) would cost
several times the download itself. A checkpoint cut short by a power loss is
hashed again by the next process, in validation and in the upload, and
fails both checks against its manifest entry, so it is never published.
"""

from __future__ import annotations

import http.client
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.hashing import BackgroundSha256
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
    """The sha256 of a download, computed in a second thread on a ring of reused buffers.

    The chunks live in ``QUEUE_CHUNKS`` buffers allocated once: the reader
    fills a free one, the thread hashes it and gives it back. Allocating a
    fresh megabyte per chunk cost more CPU than the hash itself here.
    """

    def __init__(self) -> None:
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(QUEUE_CHUNKS):
            self._free.put(memoryview(bytearray(CHUNK)))
        self._hash = BackgroundSha256(
            depth=QUEUE_CHUNKS, hashed=lambda view: self._free.put(memoryview(view.obj)), name="relay-fetch-sha256"
        )

    def buffer(self) -> memoryview:
        """Return a free buffer of CHUNK bytes to read into; hand it back with ``add``."""
        return self._free.get()

    def add(self, view: memoryview) -> None:
        """Hash ``view`` (a slice of a buffer from ``buffer``) in the thread, then free the buffer."""
        self._hash.add(view)

    def finish(self) -> str:
        return self._hash.finish()


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
            # With a Content-Encoding, Content-Length counts the encoded bytes, which urllib3 checks itself.
            expected = None if _is_encoded(response) else response.headers.get("Content-Length")
            with atomic.atomic_write(target, "wb", durable=False) as handle:
                for view in _chunks(response, hasher):
                    handle.write(view)
                    hasher.add(view)
                    written += len(view)
                    advance(len(view))
                if expected is not None and written != int(expected):
                    raise requests.ConnectionError(f"{name}: received {written} of {expected} bytes; the download was cut")
    finally:
        digest = hasher.finish()
    remember_sha256(target, digest)
    return Fetched(target, written, digest)


def _chunks(response: requests.Response, hasher: _Hasher) -> Iterator[memoryview]:
    """Yield the body in views of the hasher's buffers, read without an allocation per chunk.

    The standard library's response under urllib3 reads straight into a
    buffer. urllib3 does not expose it, so when it is missing, or when
    urllib3 would have to decode the body (Content-Encoding), the body comes
    through ``iter_content`` and is copied into the buffers.
    """
    raw = getattr(response.raw, "_fp", None)
    if raw is None or not hasattr(raw, "readinto") or _is_encoded(response):
        for chunk in response.iter_content(CHUNK):
            for offset in range(0, len(chunk), CHUNK):
                piece = chunk[offset : offset + CHUNK]
                view = hasher.buffer()
                view[: len(piece)] = piece
                yield view[: len(piece)]
        return
    while True:
        view = hasher.buffer()
        try:
            count = raw.readinto(view)
        except http.client.HTTPException as error:
            # Reading past urllib3 loses its wrapping of http.client errors (a chunked body cut short).
            raise requests.ConnectionError(f"the response body was cut short: {error!r}") from error
        if not count:
            return
        yield view[:count]


def _is_encoded(response: requests.Response) -> bool:
    return response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
