"""Atomic file writes: one helper for checkpoints, manifests, ledgers and downloads.

The temporary file always lives in the destination folder, so the final
``os.replace`` never crosses a file system (a temp folder on another mount
fails with "Invalid cross-device link"). Its name starts with
``TEMP_PREFIX``; discovery skips such names and ``clean_temporaries``
removes leftovers of a killed process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TEMP_PREFIX = ".relay-tmp-"


def is_temporary(name: str) -> bool:
    """Tell whether a file name is one of our unfinished writes."""
    return os.path.basename(name).startswith(TEMP_PREFIX)


# The maximum file name length in bytes on Linux file systems (ext4, overlayfs, tmpfs).
NAME_MAX = 255


def temporary_path(target: Path) -> Path:
    """Return a unique sibling of ``target`` whose name starts with ``TEMP_PREFIX``.

    The target's name is shortened when needed so the temporary name stays within ``NAME_MAX``.
    """
    head = f"{TEMP_PREFIX}{secrets.token_hex(4)}-"
    budget = NAME_MAX - len(head.encode())
    name = target.name.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore")
    return target.parent / f"{head}{name}"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Some file systems refuse fsync on folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    target: str | os.PathLike[str], mode: str = "wb", *, durable: bool = True, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``target`` and move it into place on success.

    On an exception the temporary file is removed and ``target`` is untouched.
    With ``durable=False`` nothing is fsynced: the file still appears whole or
    not at all while the machine runs, but a power cut may leave it short. Use
    it only for copies whose content is checked against a hash before use.
    """
    target = Path(target)
    tmp = temporary_path(target)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (``torch.save``).

    The writer fills the path; this helper fsyncs it and renames it over
    ``target``. Nothing is left behind if the writer raises.
    """
    target = Path(target)
    tmp = temporary_path(target)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_write(target, "w") as handle:
        handle.write(text)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(target, "wb") as handle:
        handle.write(data)


def clean_temporaries(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Remove unfinished writes left by a killed process, with a warning for each.

    Call it only on writable folders you own (/kaggle/working), never on inputs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f"{TEMP_PREFIX}*") if recursive else folder.glob(f"{TEMP_PREFIX}*")
    removed = []
    for path in found:
        if not path.is_file():
            continue
        log.warning("removing unfinished write left by an earlier process: %s", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
