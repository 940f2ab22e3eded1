"""Hash bytes while they are written, so a large file is never read back just to hash it."""

from __future__ import annotations

import concurrent.futures
import hashlib
from typing import IO, Any

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
