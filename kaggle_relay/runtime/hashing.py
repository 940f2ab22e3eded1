"""Hash bytes while they are written, so a large file is never hashed in a second pass.

``HashingWriter`` hashes the buffers passed to it. ``TrailingHasher`` with
``AppendingWriter`` hashes the file itself, reading it back from the page
cache in a second thread just behind the writer. ``BackgroundSha256`` hashes
buffers handed to it in a second thread while the caller moves bytes over
the network.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import IO, Any

log = logging.getLogger(__name__)

# Writes smaller than this are hashed inline; larger ones are hashed in a thread while they are written.
PARALLEL_HASH_BYTES = 1 << 20


class HashingWriter:
    """A binary file wrapper that computes the sha256 and size of everything written through it.

    Large writes are hashed in a second thread while the file write runs,
    because both release the GIL. Every write waits for its hash before
    returning, because torch passes memoryviews of buffers it reuses afterwards.
    Call ``close`` to stop the thread.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="relay-sha256"
        )

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes < PARALLEL_HASH_BYTES:
            self.digest.update(view)
            written = self.handle.write(view)
        else:
            pending = self._pool.submit(self.digest.update, view)
            written = self.handle.write(view)
            pending.result()
        self.size += view.nbytes
        return written if written is not None else view.nbytes

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BackgroundSha256:
    """A thread that hashes, in order, the buffers passed to ``add``, while the caller goes on.

    hashlib releases the interpreter lock for large buffers, so the hash runs
    beside the caller's reads and writes. At most ``depth`` buffers wait;
    ``add`` blocks when the thread falls behind. ``hashed`` is called with
    each buffer once it is hashed, so the caller can reuse it.
    """

    def __init__(
        self, depth: int = 8, hashed: Callable[[Any], None] | None = None, name: str = "relay-sha256"
    ) -> None:
        self.digest = hashlib.sha256()
        self._hashed = hashed
        self._pending: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._pending.get()) is not None:
            self.digest.update(data)
            if self._hashed is not None:
                self._hashed(data)

    def add(self, data: Any) -> None:
        """Queue ``data`` (bytes or a view nobody changes until ``hashed``) for the hash."""
        self._pending.put(data)

    def finish(self) -> str:
        """Wait for every queued buffer and return the hex sha256; the thread ends."""
        self._pending.put(None)
        self._thread.join()
        return self.digest.hexdigest()


# The trailing hasher reads back at most this much per call, into one reused buffer.
READ_CHUNK_BYTES = 8 << 20
# After hashing this much, the trailing hasher starts the kernel's write-back of it to disk.
WRITEBACK_BYTES = 64 << 20


class TrailingHasher:
    """A thread that computes the sha256 of a file while another thread appends to it.

    The writer calls ``advance(n)`` after appending ``n`` bytes. The thread
    reads those bytes back from the page cache and hashes them, so the writer
    waits for the hash only in ``finish`` and the hash covers the file's own
    bytes, not a buffer the writer may reuse. After each ``writeback_bytes`` hashed, it calls
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the hashed range. On Linux this
    starts write-back of the range's dirty pages, so the writer's final fsync
    has little left to wait for (measured on a 1 GiB save: fsync 300-400 ms
    without it, about 20 ms with it). It also drops pages already written back
    from the page cache. Platforms without ``posix_fadvise`` skip this step.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, writeback_bytes: int = WRITEBACK_BYTES
    ) -> None:
        """Open ``path`` for reading and start the thread; ``writeback_bytes=0`` turns write-back off."""
        self.size = 0
        self._reader = open(path, "rb", buffering=0)  # noqa: SIM115  (closed by close())
        self._digest = hashlib.sha256()
        self._writeback_bytes = writeback_bytes
        self._writeback_start = 0
        self._appended = 0
        self._finishing = False
        self._abandoned = False
        self._condition = threading.Condition()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="relay-sha256", daemon=True)
        self._thread.start()

    def advance(self, nbytes: int) -> None:
        """Report that ``nbytes`` more bytes were appended to the file."""
        with self._condition:
            self._appended += nbytes
            self._condition.notify()

    def finish(self) -> str:
        """Hash the bytes not hashed yet and return the hex sha256 of every appended byte."""
        self._stop(abandon=False)
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the thread without hashing the rest, then close the reader."""
        self._stop(abandon=True)
        self._reader.close()

    def __enter__(self) -> TrailingHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stop(self, *, abandon: bool) -> None:
        with self._condition:
            self._finishing = True
            self._abandoned = self._abandoned or abandon
            self._condition.notify()
        self._thread.join()

    def _run(self) -> None:
        buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        try:
            while (pending := self._wait_for_bytes()) > 0:
                self._hash_next(buffer[: min(pending, READ_CHUNK_BYTES)])
                if 0 < self._writeback_bytes <= self.size - self._writeback_start:
                    self._start_writeback()
        except Exception as exc:  # finish() re-raises it in the caller's thread
            self._error = exc

    def _wait_for_bytes(self) -> int:
        with self._condition:
            while self._appended == self.size and not self._finishing:
                self._condition.wait()
            if self._abandoned:
                return 0
            return self._appended - self.size

    def _hash_next(self, buffer: memoryview) -> None:
        count = self._reader.readinto(buffer)
        if not count:
            raise OSError(
                f"{self._reader.name}: file ended at byte {self.size}, but {self._appended} bytes "
                "were appended; another process truncated or replaced it"
            )
        # hashlib releases the GIL for large buffers, so the writer thread keeps running.
        self._digest.update(buffer[:count])
        self.size += count

    def _start_writeback(self) -> None:
        if self._writeback_bytes and hasattr(os, "posix_fadvise"):
            length = self.size - self._writeback_start
            try:
                os.posix_fadvise(
                    self._reader.fileno(), self._writeback_start, length, os.POSIX_FADV_DONTNEED
                )
            except OSError as exc:
                # Early write-back only shortens the final fsync, so the save goes on without it.
                log.warning(
                    "posix_fadvise failed on %s, so the final fsync writes it all: %s",
                    self._reader.name,
                    exc,
                )
                self._writeback_bytes = 0
        self._writeback_start = self.size


class AppendingWriter:
    """A write-only file object that appends to ``raw`` and reports each append to ``hasher``.

    It has no ``seek`` or ``tell``: a writer that tries to go back and rewrite
    bytes fails with AttributeError instead of making the hash wrong.
    """

    def __init__(self, raw: io.RawIOBase, hasher: TrailingHasher) -> None:
        self._raw = raw
        self._hasher = hasher

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = 0
        # A raw write may write fewer bytes than requested.
        while written < view.nbytes:
            count = self._raw.write(view[written:])
            if not count:
                raise OSError(
                    f"write failed after {written} of {view.nbytes} bytes: 0 bytes written"
                )
            written += count
        self._hasher.advance(written)
        return written

    def flush(self) -> None:
        """Do nothing: every write went straight to the file descriptor."""
