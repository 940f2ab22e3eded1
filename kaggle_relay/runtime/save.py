"""Save a checkpoint atomically and record it in the manifest beside it.

``save_checkpoint`` is the runtime's only way to write a checkpoint:

1. It refuses any path under ``<root>/input`` before writing anything.
2. It converts NumPy values to Python numbers or tensors and rejects any
   other object that ``torch.load(weights_only=True)`` would block, so every
   file it writes loads without trusting pickled code.
3. It estimates the file size from the tensors. When the folder's file system
   has less free space, it deletes the oldest unprotected checkpoints (never
   the best by ``metric``, never the newest valid one, never the file being
   replaced) or raises DiskSpaceError with the numbers. Both outcomes are
   recorded as manifest events.
4. It writes a temporary file in the same folder while a second thread
   reads it back just behind the writer to compute its sha256 and starts
   its write-back to disk. Then it fsyncs the file, renames it and fsyncs
   the folder.
5. It records file, bytes, sha256, format, epoch, step, metrics (as Python
   floats), creation time, run id and the compact flag in the manifest,
   which is itself written atomically, then prunes when ``keep`` is set.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import math
import operator
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from kaggle_relay.errors import (
    CheckpointInvalidError,
    ConfigError,
    DiskSpaceError,
    UnsafeCheckpointError,
)
from kaggle_relay.runtime import atomic, prune, writable
from kaggle_relay.runtime.compact import compact_state, copy_mapping
from kaggle_relay.runtime.hashing import AppendingWriter, TrailingHasher
from kaggle_relay.runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    load_or_new,
    utc_now,
)

log = logging.getLogger(__name__)

FORMAT_TORCH_ZIP = "torch-zip"
# torch.save adds pickle data, zip headers and 64-byte record alignment to the tensor bytes:
# a few hundred bytes per tensor. 1 % + 64 KiB + 512 bytes per tensor covers that with room
# to spare (an estimate, not a bound).
SIZE_MARGIN_FRACTION = 0.01
SIZE_MARGIN_BYTES = 64 << 10
SIZE_MARGIN_PER_TENSOR = 512
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")

FreeSpaceProbe = Callable[[Path], int]


def disk_free_bytes(folder: Path) -> int:
    """Return the bytes available to this process on the file system of ``folder``."""
    return shutil.disk_usage(folder).free


def new_run_id() -> str:
    """Return a new run id: the UTC start time and 4 random hex digits."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


# --- what may go into a checkpoint --------------------------------------------------------

_PLAIN_TYPES = (str, bytes, bytearray, int, float, bool, complex, type(None))
_TORCH_VALUE_TYPES = (torch.Size, torch.dtype, torch.device)
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _numpy_value(value: Any) -> tuple[bool, Any]:
    """Convert a NumPy scalar or array to a Python number or a tensor; (False, None) for anything else."""
    module = type(value).__module__
    if not module.startswith("numpy"):
        return False, None
    import numpy

    if isinstance(value, numpy.generic):
        return True, value.item()
    if isinstance(value, numpy.ndarray) and value.dtype != object:
        return True, torch.from_numpy(value.copy())
    return False, None


def weights_only_copy(obj: Any, *, where: str = "checkpoint") -> Any:
    """Return ``obj`` with NumPy values replaced, or raise UnsafeCheckpointError naming the first blocked object.

    Containers are copied, tensors are shared. ``where`` is the key path used in the error.
    """
    kind = type(obj)
    if kind in _TENSOR_TYPES or kind in _PLAIN_TYPES or kind in _TORCH_VALUE_TYPES:
        return obj
    if kind in (dict, collections.OrderedDict, collections.defaultdict, collections.Counter):
        pairs = (
            (
                weights_only_copy(key, where=f"{where} key"),
                weights_only_copy(value, where=f"{where}[{key!r}]"),
            )
            for key, value in obj.items()
        )
        if kind is collections.Counter:
            return collections.Counter(dict(pairs))
        # defaultdict's factory is a callable, which weights_only blocks, so it becomes a plain dict.
        return copy_mapping(obj, pairs)
    if kind in (list, tuple, set):
        return kind(
            weights_only_copy(item, where=f"{where}[{index}]") for index, item in enumerate(obj)
        )
    converted, value = _numpy_value(obj)
    if converted:
        return value
    raise UnsafeCheckpointError(
        where,
        [f"{kind.__module__}.{kind.__qualname__}"],
        hint="store it as a tensor, a Python number or a dict of those (for example metrics as floats), "
        "so the file loads with weights_only=True",
    )


def estimate_bytes(obj: Any) -> int:
    """Estimate the size of ``torch.save(obj)`` from its tensor storages plus a margin."""
    seen: dict[tuple[str, int], int] = {}
    count = 0

    def visit(value: Any) -> None:
        nonlocal count
        if isinstance(value, torch.Tensor):
            count += 1
            storage = value.untyped_storage()
            seen[(str(value.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple | set):
            for item in value:
                visit(item)

    visit(obj)
    data = sum(seen.values())
    return (
        data + int(data * SIZE_MARGIN_FRACTION) + SIZE_MARGIN_BYTES + SIZE_MARGIN_PER_TENSOR * count
    )


def python_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Return ``metrics`` as Python floats; non-finite values are left out with a warning."""
    result: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"metric {name!r} = {value!r} is not a number",
                field="metrics",
                hint="pass numbers only",
            ) from exc
        if not math.isfinite(number):
            log.warning(
                "metric %s is %s: left out of the manifest, so this checkpoint cannot be the best",
                name,
                number,
            )
            continue
        result[str(name)] = number
    return result


# --- writing ------------------------------------------------------------------------------


def write_torch_file(obj: Any, target: Path) -> tuple[int, str]:
    """Write ``torch.save(obj)`` to ``target`` atomically; return its size and sha256.

    A second thread hashes the temporary file just behind torch's writer and
    starts its write-back early. The hash is complete and checked against the
    file size before ``atomic_path`` fsyncs the file and renames it.
    """
    with atomic.atomic_path(target) as temporary:
        with open(temporary, "xb", buffering=0) as raw, TrailingHasher(temporary) as hasher:
            # A file object rather than a path: torch then names the archive's root folder
            # "archive", not after the temporary file name.
            torch.save(obj, AppendingWriter(raw, hasher))  # type: ignore[arg-type]
            digest = hasher.finish()
            size = os.fstat(raw.fileno()).st_size
        if size != hasher.size:
            raise CheckpointInvalidError(
                str(temporary),
                f"the file has {size} bytes but {hasher.size} were hashed; "
                "another process wrote to it during the save",
                hint="save again, and let only one process write this checkpoint",
            )
    return size, digest


def _check_name(name: str) -> None:
    if name == MANIFEST_NAME or atomic.is_temporary(name) or not _NAME_PATTERN.match(name):
        raise ConfigError(
            f"checkpoint name {name!r} is invalid",
            field="name",
            hint="use a plain file name such as 'ckpt-step000200.pt' (no folders, not the manifest name)",
        )


# --- free space ---------------------------------------------------------------------------


def ensure_free_space(
    manifest: Manifest,
    target: Path,
    needed: int,
    *,
    metric: str | None,
    mode: str | None,
    probe: FreeSpaceProbe,
) -> None:
    """Make ``needed`` bytes free in the manifest's folder by deleting old unprotected checkpoints.

    Raises DiskSpaceError, after recording a ``save-refused`` event, when
    deleting every unprotected checkpoint would not be enough. In that case nothing is deleted.
    """
    free = probe(manifest.folder)
    if free >= needed:
        return
    items = [item for item in prune.retention_items(manifest) if item.file != target.name]
    chosen = prune.plan_space_release(items, needed - free, prune.protection_policies(metric, mode))
    if not chosen:
        manifest.record_event("save-refused", file=target.name, needed=needed, free=free)
        manifest.save()
        raise DiskSpaceError(str(target), needed, free)

    log.warning(
        "only %d bytes free for a save of about %d bytes: deleting %d old checkpoints",
        free,
        needed,
        len(chosen),
    )
    prune.delete_checkpoints(manifest, chosen, event="free-space")
    manifest.save()
    free = probe(manifest.folder)
    if free < needed:
        manifest.record_event("save-refused", file=target.name, needed=needed, free=free)
        manifest.save()
        raise DiskSpaceError(str(target), needed, free)


# --- the public functions -----------------------------------------------------------------


def whole_number(field: str, value: Any) -> int | None:
    """Return ``value`` as a Python int (NumPy and torch integers included) before anything is written.

    The manifest is JSON, so a NumPy integer found only when it is written
    would leave a saved checkpoint that the manifest does not list.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be a whole number, not {value!r}", field=field)
    try:
        return operator.index(value)
    except TypeError:
        if hasattr(value, "item") and float(value.item()).is_integer():
            return int(value.item())
        raise ConfigError(f"{field} must be a whole number, not {value!r}", field=field) from None


def save_checkpoint(
    obj: Any,
    name: str,
    *,
    folder: str | os.PathLike[str] | None = None,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    compact: bool | str = False,
    keep: int | None = None,
    metric: str | None = None,
    mode: str | None = None,
    done: bool = False,
    run_id: str | None = None,
    free_space: FreeSpaceProbe | None = None,
) -> ManifestEntry:
    """Save ``obj`` as ``folder/name`` atomically and record it in the folder's manifest.

    ``folder`` defaults to ``<root>/working/checkpoints``. ``compact`` drops
    optimizer and scheduler state and casts floating tensors to half precision
    (``True`` or ``"fp16"``, or ``"bf16"``). ``keep`` prunes to the newest
    ``keep`` checkpoints after the save, always keeping the best by ``metric``
    (direction ``mode``, "min" or "max") and the newest valid one. ``done``
    marks the run finished. ``free_space`` returns the free bytes of a folder
    (default ``shutil.disk_usage``); tests pass their own.

    Returns the manifest entry of the new file. Raises ReadOnlyLocationError
    for a folder under the input folder, UnsafeCheckpointError for an object
    that would not load with ``weights_only=True``, and DiskSpaceError.
    """
    _check_name(name)
    target_folder = writable.reject_input_path(folder or writable.default_checkpoint_folder())
    if keep is not None:
        writable.require_working_path(target_folder)
        prune.retention_policies(keep, metric, mode)  # validates metric and mode before any write
    target = target_folder / name
    clean_metrics = python_metrics(metrics)
    epoch, step = whole_number("epoch", epoch), whole_number("step", step)

    if compact:
        obj = compact_state(obj, dtype=compact)
    obj = weights_only_copy(obj)

    target_folder.mkdir(parents=True, exist_ok=True)
    manifest = load_or_new(target_folder)
    run_id = run_id or manifest.run_id or new_run_id()
    ensure_free_space(
        manifest,
        target,
        estimate_bytes(obj),
        metric=metric,
        mode=mode,
        probe=free_space or disk_free_bytes,
    )

    size, digest = write_torch_file(obj, target)
    entry = ManifestEntry(
        file=name,
        bytes=size,
        sha256=digest,
        format=FORMAT_TORCH_ZIP,
        epoch=epoch,
        step=step,
        metrics=clean_metrics,
        created=utc_now(),
        run_id=run_id,
        compact=bool(compact),
    )
    _record(manifest, entry, run_id=run_id, done=done)
    log.info("saved checkpoint %s (%d bytes, step %s)", target, size, step)

    if keep is not None:
        prune.prune_checkpoints(target_folder, keep=keep, metric=metric, mode=mode)
    return entry


def _record(manifest: Manifest, entry: ManifestEntry, *, run_id: str, done: bool) -> None:
    manifest.run_id = run_id
    manifest.upsert(entry)
    if done:
        manifest.done = True
        manifest.record_event("done", file=entry.file)
    manifest.save()


def mark_done(folder: str | os.PathLike[str] | None = None) -> Manifest:
    """Set the manifest's ``done`` flag, which makes the relay stop the chain after this session."""
    target_folder = writable.reject_input_path(folder or writable.default_checkpoint_folder())
    target_folder.mkdir(parents=True, exist_ok=True)
    manifest = load_or_new(target_folder)
    manifest.done = True
    manifest.record_event("done")
    manifest.save()
    log.info("marked the run in %s as done", target_folder)
    return manifest
