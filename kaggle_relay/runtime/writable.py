"""Path checks for writes: under the working folder, never under the read-only input folder.

On Kaggle, /kaggle/input is a read-only mount and /kaggle/working is the only
folder kept as the session's output. Tests and local runs move the whole tree
with ``KAGGLE_RELAY_KAGGLE_ROOT``. Every function here checks paths before
anything is written, so a refused save leaves no file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from kaggle_relay.errors import ReadOnlyLocationError

CHECKPOINT_FOLDER = "checkpoints"


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def kaggle_root() -> Path:
    from kaggle_relay.runtime import discover

    return _resolved(discover.kaggle_root())


def input_root() -> Path:
    return kaggle_root() / "input"


def working_root() -> Path:
    return kaggle_root() / "working"


def default_checkpoint_folder() -> Path:
    """Return ``<root>/working/checkpoints``, where a run's checkpoints and manifest live."""
    return working_root() / CHECKPOINT_FOLDER


def is_under(path: str | os.PathLike[str], folder: Path) -> bool:
    return _resolved(path).is_relative_to(folder)


def reject_input_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` resolved, or raise ReadOnlyLocationError when it lies under the input folder."""
    resolved = _resolved(path)
    if resolved.is_relative_to(input_root()):
        raise ReadOnlyLocationError(
            str(path), f"{path} is under {input_root()}, which is read-only: nothing was written"
        )
    return resolved


def require_working_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` resolved if the runtime may delete files there.

    Deleting is allowed only under the working folder. When that folder does
    not exist (a local run with no Kaggle-shaped tree), only the input check
    applies.
    """
    resolved = reject_input_path(path)
    working = working_root()
    if working.is_dir() and not resolved.is_relative_to(working):
        raise ReadOnlyLocationError(
            str(path),
            f"{path} is outside {working}: the runtime deletes files only under the working folder",
        )
    return resolved
