"""The byte mover of dataset uploads: one streaming PUT per file, hashed while it is sent.

The kaggle client (2.2.x) creates a dataset version in three steps:
StartBlobUpload for each file, a resumable PUT of the file's bytes to the
returned URL (``KaggleApi.upload_complete``), then the create call with the
upload tokens. The relay keeps the first and last steps and replaces only
the PUT, on its own ``KaggleApi`` instance, because the client's PUT

- sends the file in 16 KiB blocks through a progress wrapper, measurably
  slower on a fast link (the README's performance section has the figures);
- has no timeout, so a server that stops responding hangs the relay;
- cannot tell whether the bytes it sent are the ones the manifest names.

``StreamingUploader.upload_complete`` keeps the client's contract. It takes
the same arguments and returns the same codes (``ResumableUploadResult``).
Before a resume it sends a probe PUT with ``Content-Range: bytes */<size>``.
It restarts from scratch when the upload session is gone (404), and returns
INCOMPLETE, so the client resumes, after a broken connection or a 429 or 503
(once its Retry-After has passed).

It also computes the sha256 of each file while sending it. A resumed upload
hashes the part sent earlier from disk first, so the digest always covers
the whole file. A file this process already hashed (while downloading it)
and that is unchanged since is not hashed again. When ``expect`` registered a
digest for the file and the bytes differ, the upload raises
CheckpointInvalidError, so the client never creates the version.

``install`` checks that the client still calls ``upload_complete`` this way
and raises EndpointSeamError naming what changed otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import requests
from requests.adapters import HTTPAdapter

from kaggle_relay.errors import CheckpointInvalidError, EndpointSeamError
from kaggle_relay.runtime.hashing import BackgroundSha256
from kaggle_relay.runtime.validate import known_sha256

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

BLOCK = 1 << 20
#: Seconds to connect, and to wait for each send or reply, of one PUT.
TIMEOUT = (30.0, 300.0)
# The codes of kaggle.models.kaggle_models_extended.ResumableUploadResult.
COMPLETE, FAILED, INCOMPLETE, EXPIRED = 1, 2, 3, 4
_ATTRIBUTE = "_kaggle_relay_uploader"
#: The longest Retry-After the uploader waits out before resuming.
MAX_RETRY_AFTER = 60.0


class _UploadBody:
    """The file body of one PUT: read in 1 MiB blocks, hashed in a second thread unless the hash is known."""

    def __init__(self, handle: BinaryIO, length: int, *, known: str | None, advance: Callable[[int], None]) -> None:
        self.handle = handle
        self.length = length
        self.known = known
        self.advance = advance
        self.hash = BackgroundSha256(name="relay-upload-sha256") if known is None else None

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size if size and size > 0 else BLOCK)
        if block and self.hash is not None:
            self.hash.add(block)
        self.advance(len(block))
        return block

    def __len__(self) -> int:
        return self.length

    def finish(self) -> str:
        """Return the sha256 of the whole file (the known one, or the one computed while sending)."""
        if self.hash is None:
            assert self.known is not None
            return self.known
        return self.hash.finish()


class _LargeBlockAdapter(HTTPAdapter):
    """An adapter whose connections send a file body in 1 MiB blocks instead of urllib3's 16 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


class StreamingUploader:
    """Replaces ``upload_complete`` on one KaggleApi; see the module docstring."""

    def __init__(self, timeout: tuple[float, float] = TIMEOUT, sleep: Callable[[float], None] = time.sleep) -> None:
        self.timeout = timeout
        self.sleep = sleep
        self.expected: dict[str, str] = {}
        #: The sha256 of each file the server accepted, by absolute path.
        self.sent: dict[str, str] = {}

    def expect(self, path: Path, sha256: str) -> None:
        """Fail the upload of ``path`` unless its bytes hash to ``sha256``."""
        self.expected[os.path.abspath(path)] = sha256

    def _session(self) -> requests.Session:
        session = requests.Session()
        adapter = _LargeBlockAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def upload_complete(self, path: str, url: str, quiet: bool, resume: bool = False) -> int:
        """Send ``path`` to the upload ``url``; return a ResumableUploadResult code."""
        size = os.path.getsize(path)
        start = 0
        try:
            with self._session() as session:
                if resume:
                    result, start = self._probe(session, url, size)
                    if result == COMPLETE:
                        return self._check_digest(path, known_sha256(path) or _file_sha256(path))
                    if result != INCOMPLETE:
                        return result
                return self._put(session, path, url, size, start, quiet)
        except (requests.RequestException, OSError) as error:
            # The client resumes after this, from the offset the server reports.
            log.warning("upload of %s broke off (%s); resuming", Path(path).name, error)
            return INCOMPLETE

    def _probe(self, session: requests.Session, url: str, size: int) -> tuple[int, int]:
        """Ask how much of the file the server has; return (result code, offset to resume at)."""
        headers = {"Content-Length": "0", "Content-Range": f"bytes */{size}"}
        response = session.put(url, headers=headers, timeout=self.timeout)
        if response.status_code in (200, 201):
            return COMPLETE, size
        if response.status_code == 404:
            log.info("the upload session expired; starting the file again")
            return EXPIRED, 0
        if response.status_code != 308:
            log.warning("upload progress probe failed with HTTP %d; giving up on this upload", response.status_code)
            return FAILED, 0
        received = response.headers.get("Range")
        if received is None:
            return INCOMPLETE, 0
        _, _, last = received.partition("-")
        if not last.isdigit():
            log.warning("unreadable Range header %r in the upload progress; starting the file again", received)
            return EXPIRED, 0
        start = int(last) + 1
        if start > size:
            log.warning("the upload server reports %d bytes of a %d-byte file; starting the file again", start, size)
            return EXPIRED, 0
        if start == size:
            # Every byte arrived, though the server responded 308: a resume PUT would have an empty range.
            return COMPLETE, size
        return INCOMPLETE, start

    def _put(self, session: requests.Session, path: str, url: str, size: int, start: int, quiet: bool) -> int:
        headers = {"Content-Length": str(size - start)}
        if start > 0:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            log.info("resuming the upload of %s at byte %d of %d", Path(path).name, start, size)
        # A file this process hashed while downloading it, unchanged since (same inode, size, mtime
        # and ctime), is not hashed again: on loopback the hash would halve the upload rate.
        known = known_sha256(path) if start == 0 else None
        with open(path, "rb") as handle, _progress(Path(path).name, size, start, quiet) as advance:
            body = _UploadBody(handle, size - start, known=known, advance=advance)
            try:
                if body.hash is not None:
                    # The server has the first ``start`` bytes from an earlier PUT; hash them from disk.
                    _hash_range(handle, start, body.hash.add)
                response = session.put(url, data=body, headers=headers, timeout=self.timeout)
            finally:
                digest = body.finish()
        if response.status_code in (429, 503):
            self._wait_retry_after(response)
            return INCOMPLETE
        if response.status_code not in (200, 201):
            log.warning("upload of %s rejected with HTTP %d", Path(path).name, response.status_code)
            return FAILED
        return self._check_digest(path, digest)

    def _wait_retry_after(self, response: requests.Response) -> None:
        """Honour a Retry-After in seconds, at most MAX_RETRY_AFTER; the client resumes right after."""
        value = response.headers.get("Retry-After", "")
        try:
            seconds = min(float(value), MAX_RETRY_AFTER)
        except ValueError:
            seconds = 1.0
        log.info("upload server responded with HTTP %d; resuming in %.1f s", response.status_code, seconds)
        self.sleep(max(seconds, 0.0))

    def _check_digest(self, path: str, digest: str) -> int:
        """Record the sha256 of the bytes sent; raise CheckpointInvalidError when it is not the expected one."""
        key = os.path.abspath(path)
        self.sent[key] = digest
        expected = self.expected.get(key)
        if expected is not None and digest != expected:
            log.error("refusing %s: the bytes sent hash to %s, the manifest records %s", Path(path).name, digest, expected)
            raise CheckpointInvalidError(
                path, f"the bytes uploaded hash to {digest}, but the manifest records {expected}: the file "
                "changed on disk after it was validated; no version was created, publish again",
            )
        return COMPLETE


@contextlib.contextmanager
def _progress(name: str, size: int, start: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """Show a byte progress bar on stderr unless ``quiet``; yield the function that advances it."""
    if quiet:
        yield lambda _size: None
        return
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=Console(stderr=True)
    ) as progress:
        task = progress.add_task(f"upload {name}", total=size, completed=start)
        yield lambda sent: progress.advance(task, sent)


def _hash_range(handle: BinaryIO, length: int, add: Callable[[bytes], None]) -> None:
    """Pass the first ``length`` bytes of ``handle`` to ``add`` and leave the handle at ``length``."""
    handle.seek(0)
    remaining = length
    while remaining > 0:
        block = handle.read(min(BLOCK, remaining))
        if not block:
            raise OSError(f"{handle.name} is shorter than the {length} bytes already uploaded")
        add(block)
        remaining -= len(block)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        _hash_range(handle, os.path.getsize(path), digest.update)
    return digest.hexdigest()


def install(api: KaggleApi) -> StreamingUploader:
    """Make ``api`` send upload bytes through a StreamingUploader (once); return it."""
    uploader = getattr(api, _ATTRIBUTE, None)
    if isinstance(uploader, StreamingUploader):
        return uploader
    check_seam(type(api))
    uploader = StreamingUploader()
    api.upload_complete = uploader.upload_complete  # type: ignore[method-assign]
    setattr(api, _ATTRIBUTE, uploader)
    return uploader


def check_seam(api_class: type) -> None:
    """Raise EndpointSeamError unless the client still uploads through ``upload_complete(path, url, quiet, resume)``."""
    method = getattr(api_class, "upload_complete", None)
    caller = getattr(api_class, "_upload_blob", None)
    if method is None or caller is None:
        raise EndpointSeamError("KaggleApi no longer has upload_complete and _upload_blob; the relay cannot stream uploads")
    parameters = list(inspect.signature(method).parameters)
    if parameters[:5] != ["self", "path", "url", "quiet", "resume"]:
        raise EndpointSeamError(f"KaggleApi.upload_complete now takes {parameters}; the relay expects (path, url, quiet, resume)")
    try:
        source = inspect.getsource(caller)
    except (OSError, TypeError):
        return
    if "self.upload_complete(" not in source:
        raise EndpointSeamError("KaggleApi._upload_blob no longer calls self.upload_complete; the relay cannot stream uploads")
