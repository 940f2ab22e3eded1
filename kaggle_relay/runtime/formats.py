"""Checkpoint formats: detection from the first bytes, and completeness without reading tensor data.

Formats:

- ``torch-zip``: what ``torch.save`` writes since torch 1.6, a zip archive
  with ``<name>/data.pkl`` and one ``<name>/data/<key>`` entry per storage.
- ``torch-legacy``: ``torch.save(..., _use_new_zipfile_serialization=False)``,
  a sequence of pickles that starts with torch's magic number, followed by
  the raw storages.
- ``safetensors``: an 8-byte little-endian header length, a JSON header, then
  the tensor bytes.
- ``directory``: a Hugging Face Trainer folder (``checkpoint-N/``) holding
  weights, ``optimizer.pt``, ``scheduler.pt`` and ``trainer_state.json``.
- ``unknown``: anything else, including an empty file.

``check_file`` reads the zip directory, the safetensors header or the legacy
pickles, never the tensor bytes, and describes what is missing when a
file is cut short. The one exception is a complete legacy file, which torch
cannot memory-map: it is also loaded once with ``torch.load(weights_only=True)``,
which imports torch and reads the whole file.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import mmap
import operator
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kaggle_relay.runtime import peek as _peek
from kaggle_relay.runtime import zipdir
from kaggle_relay.runtime.peek import (
    DTYPE_ITEMSIZE,
    PeekResult,
    PickleNotSupportedError,
    StorageRef,
    TensorRef,
)

log = logging.getLogger(__name__)

TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
SAFETENSORS = "safetensors"
DIRECTORY = "directory"
UNKNOWN = "unknown"

# torch's legacy magic number, pickled as LONG1 with 10 little-endian bytes.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_EMPTY = b"PK\x05\x06"
# safetensors refuses headers above 100 MB; anything larger is not a safetensors file.
_SAFETENSORS_MAX_HEADER = 100_000_000
_SNIFF_BYTES = 32
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_SMALL_FILE = 1 << 20
# A truncated zip is read from its start to recover data.pkl; a data.pkl past this is not recovered.
_TRUNCATED_HEAD_BYTES = 64 << 20

SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "C64": 8,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip

# A Trainer checkpoint folder: one of these weight files (or an index and its shards) ...
TRAINER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
TRAINER_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# ... and these files, which a resume with the Trainer needs.
TRAINER_PARTS = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
_TRAINER_DIR_NAME = re.compile(r"checkpoint-\d+$")


@dataclass
class FormatCheck:
    """The format of one checkpoint and what its metadata shows, without tensor data.

    ``complete`` covers the bytes only. ``load_error`` is set when the bytes are
    all there but torch's weights_only loader would still reject the pickle
    for a reason other than a global; ``blocked`` lists the globals it blocks.
    """

    path: str
    format: str
    bytes: int
    complete: bool = False
    reason: str = ""
    load_error: str = ""
    blocked: list[str] = field(default_factory=list)
    tree: Any = None
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    peek: PeekResult | None = field(default=None, repr=False)


def sniff_format(head: bytes) -> str:
    """Name the format that the first bytes of a file show (``unknown`` when none)."""
    if head.startswith(_ZIP_LOCAL) or head.startswith(_ZIP_EMPTY):
        return TORCH_ZIP
    if len(head) >= 14 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2:14] == _LEGACY_MAGIC:
        return TORCH_LEGACY
    if len(head) >= 9 and head[8:9] == b"{":
        header_length = struct.unpack("<Q", head[:8])[0]
        if 2 <= header_length <= _SAFETENSORS_MAX_HEADER:
            return SAFETENSORS
    return UNKNOWN


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name the format of a file or folder from its first bytes (zip entries are not checked)."""
    if os.path.isdir(path):
        return DIRECTORY if is_trainer_directory(path) else UNKNOWN
    with open(path, "rb") as handle:
        return sniff_format(handle.read(_SNIFF_BYTES))


def check_file(
    path: str | os.PathLike[str], *, expected_bytes: int | None = None, legacy_torch_load: bool = True
) -> FormatCheck:
    """Detect the format of ``path`` and check that every byte its metadata references is present.

    ``expected_bytes`` (from a manifest entry) lets a truncation message give
    the full size. With ``legacy_torch_load`` a complete legacy file is also
    loaded by torch, see the module docstring.
    """
    path = os.fspath(path)
    descriptor, status = _open_and_stat(path)
    try:
        if stat.S_ISDIR(status.st_mode):
            return _check_directory(path)
        size = status.st_size
        if size == 0:
            return FormatCheck(path, UNKNOWN, 0, reason="empty (0 bytes)")
        if descriptor < 0:
            descriptor = os.open(path, _READ_FLAGS)
        if size <= _SMALL_FILE:
            # A small file is read whole once, instead of in four seeks and reads.
            data = _read_up_to(descriptor, size)
            head = data[:_SNIFF_BYTES]
            kind = sniff_format(head)
            if kind == TORCH_ZIP:
                return _check_zip(path, io.BytesIO(data), size, expected_bytes)
        else:
            with open(descriptor, "rb", closefd=False) as handle:
                head = handle.read(_SNIFF_BYTES)
                kind = sniff_format(head)
                if kind == TORCH_ZIP:
                    return _check_zip(path, handle, size, expected_bytes)
    finally:
        if descriptor >= 0:
            os.close(descriptor)
    if kind == TORCH_LEGACY:
        return _check_legacy(path, size, expected_bytes, legacy_torch_load)
    if kind == SAFETENSORS:
        return _check_safetensors(path, size)
    return FormatCheck(path, UNKNOWN, size, reason=_describe_unknown(head, size))


def _open_and_stat(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` and stat it through the descriptor, which saves one path lookup per file.

    When the open fails (a folder on Windows, a file without read permission)
    the descriptor is -1 and the status comes from ``os.stat``, so an empty or
    missing file is reported as before and a folder is still checked.
    """
    try:
        descriptor = os.open(path, _READ_FLAGS)
    except OSError:
        return -1, os.stat(path)
    try:
        return descriptor, os.fstat(descriptor)
    except OSError:
        os.close(descriptor)
        raise


def _read_up_to(descriptor: int, size: int) -> bytes:
    """Read ``size`` bytes from the start of an open file (fewer if it is shorter now).

    With the open and close this makes 4 system calls where ``open()`` and two
    reads make 10. On a 2 KiB checkpoint it took 3.9 instead of 7.1 microseconds.
    """
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = os.read(descriptor, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _describe_unknown(head: bytes, size: int) -> str:
    if _starts_a_known_format(head):
        return f"truncated ({size} bytes): too short to show its format"
    if head[:1] == b"\x80":
        return "a Python pickle without torch's magic number, not a torch checkpoint"
    if size < 9:
        return f"truncated or not a checkpoint ({size} bytes): too short to show its format"
    return f"unknown format (first bytes {head[:8].hex()}); expected a torch zip, a legacy torch file or safetensors"


def _starts_a_known_format(head: bytes) -> bool:
    """Tell whether ``head`` is the start of a zip or legacy torch file cut before its magic number ends."""
    for magic in (_ZIP_LOCAL, _ZIP_EMPTY):
        if len(head) < len(magic) and magic.startswith(head):
            return True
    if head == b"\x80":
        return True
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    legacy = head[2:]
    return len(legacy) < len(_LEGACY_MAGIC) and _LEGACY_MAGIC.startswith(legacy)


def _truncated(size: int, total: int | None, detail: str) -> str:
    if total is not None and total > size:
        return f"truncated ({size} of {total} bytes): {detail}"
    return f"truncated ({size} bytes): {detail}"


# --- torch zip ----------------------------------------------------------------


def _check_zip(path: str, handle: BinaryIO, size: int, expected: int | None) -> FormatCheck:
    try:
        entries = zipdir.read_directory(handle, size)
    except zipfile.BadZipFile:
        return _check_cut_zip(path, size, expected)
    pickle_name = _find_data_pkl(entries)
    if pickle_name is None:
        return FormatCheck(path, UNKNOWN, size, reason="a zip archive without a data.pkl entry, not a torch checkpoint")
    result = FormatCheck(path, TORCH_ZIP, size)
    try:
        data = zipdir.read_entry(handle, entries[pickle_name])
    except (zipfile.BadZipFile, zlib.error, OSError) as exc:
        result.reason = f"{pickle_name} cannot be read ({exc})"
        return result
    _apply_peek(result, data, 0, _peek.peek_pickle)
    if result.reason or result.load_error:
        return result
    prefix = pickle_name[: -len("data.pkl")]
    result.reason = _missing_storage_bytes(result, entries, prefix, size)
    result.complete = not result.reason
    return result


def _find_data_pkl(entries: dict[str, zipdir.ZipEntry]) -> str | None:
    for name in entries:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name
    return None


def _apply_peek(result: FormatCheck, data: Any, start: int, reader: Any, **kwargs: Any) -> PeekResult | None:
    """Run the restricted unpickler and record its findings on ``result``."""
    try:
        found: PeekResult = reader(data, start=start, **kwargs)
    except EOFError as exc:
        result.reason = f"data.pkl is cut short ({exc})"
        return None
    except PickleNotSupportedError as exc:
        result.load_error = str(exc)
        return None
    result.tree = found.root
    result.blocked = list(found.blocked)
    result.metadata["pickle_protocol"] = str(found.protocol)
    result.peek = found
    return found


def _missing_storage_bytes(result: FormatCheck, entries: dict[str, zipdir.ZipEntry], prefix: str, size: int) -> str:
    found = result.peek
    if found is None:
        return "data.pkl was not read"
    missing, short = [], []
    data_prefix = f"{prefix}data/"
    itemsize = DTYPE_ITEMSIZE.get
    entry_for = entries.get
    for key, storage in found.storages.items():
        info = entry_for(data_prefix + key)
        if info is None:
            missing.append(key)
            continue
        needed = storage.numel * itemsize(storage.dtype, 1)
        if info.file_size < needed:
            short.append(f"{key} ({info.file_size} of {needed} bytes)")
        elif info.header_offset + 30 + len(info.filename) + info.compress_size > size:
            short.append(f"{key} (its data runs past the end of the file)")
    overrun = _count_overruns(found.tensors)
    problems = []
    if missing:
        problems.append(f"storage entries missing: {', '.join(missing[:5])}")
    if short:
        problems.append(f"storage entries too short: {', '.join(short[:5])}")
    if overrun:
        problems.append(f"{overrun} tensors reach past the end of their storage")
    return "incomplete: " + "; ".join(problems) if problems else ""


def _count_overruns(tensors: list[TensorRef]) -> int:
    """Count the tensors whose shape, stride and offset reach past the end of their storage.

    The same rule as ``TensorRef.storage_bytes_needed`` against ``StorageRef.nbytes``,
    inlined because a checkpoint has thousands of tensors (a test checks both agree).
    """
    itemsize = DTYPE_ITEMSIZE.get
    count = 0
    for dtype, shape, storage, offset, stride, _parameter in tensors:
        if storage is None:
            continue
        if len(shape) == len(stride) and 0 not in shape:
            # 1 + sum((size - 1) * step), with the sums done in C.
            reach = offset + 1 + sum(map(operator.mul, shape, stride)) - sum(stride)
        else:
            extent = _extent(shape, stride)
            if extent is None:
                continue  # an empty tensor reaches no byte
            reach = offset + extent
        if dtype == storage.dtype:
            count += reach > storage.numel
        else:
            count += reach * itemsize(dtype, 1) > storage.numel * itemsize(storage.dtype, 1)
    return count


def _extent(shape: tuple[int, ...], stride: tuple[int, ...]) -> int | None:
    """Return how many elements a view spans from its first one, or None when a paired size is 0."""
    extent = 1
    for length, step in zip(shape, stride, strict=False):
        if length == 0:
            return None
        extent += (length - 1) * step
    return extent


def _check_cut_zip(path: str, size: int, expected: int | None) -> FormatCheck:
    """Describe a zip whose directory at the end is missing, from the data.pkl at its start."""
    result = FormatCheck(path, TORCH_ZIP, size)
    with open(path, "rb") as handle:
        head = handle.read(min(size, _TRUNCATED_HEAD_BYTES))
    if len(head) < 30:
        result.reason = _truncated(size, expected, "the file ends inside the first zip header")
        return result
    name_length, extra_length = struct.unpack("<HH", head[26:30])
    name = head[30 : 30 + name_length].decode("utf-8", "replace")
    if not name.endswith("/data.pkl"):
        result.format = UNKNOWN
        result.reason = _truncated(size, expected, f"a zip archive without its directory, first entry {name!r}")
        return result
    start = 30 + name_length + extra_length
    try:
        found = _peek.peek_pickle(head, start=start)
    except (EOFError, PickleNotSupportedError):
        result.reason = _truncated(size, expected, "the file ends inside data.pkl")
        return result
    result.tree, result.blocked = found.root, list(found.blocked)
    least = found.end + sum(storage.nbytes for storage in found.storages.values())
    if expected is not None:
        total: int | None = expected
    elif least > size:
        total = least
    else:
        total = None
    qualifier = "" if expected is not None or total is None else "at least "
    detail = "the zip directory at the end is missing"
    result.reason = (
        f"truncated ({size} of {qualifier}{total} bytes): {detail}" if total else _truncated(size, None, detail)
    )
    return result


# --- legacy torch ---------------------------------------------------------------


def _check_legacy(path: str, size: int, expected: int | None, torch_load: bool) -> FormatCheck:
    result = FormatCheck(path, TORCH_LEGACY, size)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        total = _walk_legacy(result, data, size, expected)
    if result.reason or result.load_error:
        return result
    if total is not None and total > size:
        result.reason = _truncated(size, expected or total, "the file ends inside the tensor data")
        return result
    result.complete = True
    if torch_load and not result.blocked:
        _legacy_torch_load(result)
    return result


def _walk_legacy(result: FormatCheck, data: Any, size: int, expected: int | None) -> int | None:
    """Read the legacy pickles and return the file size their storages need."""
    position = 0
    try:
        for _ in range(3):  # magic number, protocol version, system info
            position = _peek.peek_pickle(data, start=position).end
        found = _peek.peek_pickle(data, start=position, persistent_load=_peek.legacy_storage)
        result.tree = found.root
        result.blocked = list(found.blocked)
        result.metadata["pickle_protocol"] = str(found.protocol)
        result.peek = found
        keys = _peek.peek_pickle(data, start=found.end)
    except EOFError:
        # A legacy file is a run of pickles, so one that ends early is a cut file, not a bad pickle.
        result.reason = _truncated(size, expected, "the file ends inside its pickled header")
        return None
    except PickleNotSupportedError as exc:
        result.load_error = str(exc)
        return None
    if not isinstance(keys.root, list):
        result.load_error = "the legacy storage key list is not a list"
        return None
    storages = found.storages
    total = keys.end + sum(8 + storages[key].nbytes for key in keys.root if key in storages)
    return total


def _legacy_torch_load(result: FormatCheck) -> None:
    """Load a legacy file with torch (weights_only), because nothing lighter reads it (see module doc)."""
    import torch  # noqa: PLC0415  (torch only for this one format)

    try:
        torch.load(result.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here; each one makes the file unusable
        result.complete = False
        result.reason = f"torch.load(weights_only=True) failed on this legacy file: {_first_line(exc)}"
        return
    result.notes.append("legacy torch format: checked with a full torch.load(weights_only=True)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- safetensors ----------------------------------------------------------------


def _check_safetensors(path: str, size: int) -> FormatCheck:
    result = FormatCheck(path, SAFETENSORS, size)
    with open(path, "rb") as handle:
        header_length = struct.unpack("<Q", handle.read(8))[0]
        raw = handle.read(header_length)
    if len(raw) < header_length:
        result.reason = _truncated(size, None, f"the file ends inside its {header_length}-byte JSON header")
        return result
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.reason = f"the safetensors header is not valid JSON ({exc})"
        return result
    if not isinstance(header, dict):
        result.reason = "the safetensors header is not a JSON object"
        return result
    tensors, end, problems = _safetensors_tensors(header)
    metadata = header.get("__metadata__") or {}
    result.metadata = {str(key): str(value) for key, value in metadata.items()} if isinstance(metadata, dict) else {}
    result.tree = tensors
    total = 8 + header_length + end
    if problems:
        result.reason = "invalid safetensors header: " + "; ".join(problems[:3])
    elif size < total:
        result.reason = _truncated(size, total, "the file ends inside the tensor data")
    else:
        result.complete = True
    return result


def _safetensors_tensors(header: dict[str, Any]) -> tuple[dict[str, TensorRef], int, list[str]]:
    tensors: dict[str, TensorRef] = {}
    problems: list[str] = []
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"tensor {name!r} lacks dtype, shape or data_offsets")
            continue
        tensor = TensorRef(dtype=str(dtype).lower(), shape=tuple(int(item) for item in shape))
        itemsize = SAFETENSORS_ITEMSIZE.get(str(dtype))
        if itemsize is not None and stop - begin != tensor.numel * itemsize:
            problems.append(f"tensor {name!r} spans {stop - begin} bytes, its shape needs {tensor.numel * itemsize}")
        tensors[name] = tensor
        end = max(end, int(stop))
    return tensors, end, problems


# --- Trainer checkpoint folders --------------------------------------------------


def is_trainer_directory(path: str | os.PathLike[str]) -> bool:
    """Tell whether a folder looks like a Hugging Face Trainer checkpoint (``checkpoint-N/``)."""
    folder = Path(path)
    if _TRAINER_DIR_NAME.match(folder.name):
        return True
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    return "trainer_state.json" in names and bool(names & set(TRAINER_WEIGHTS + TRAINER_INDEXES))


def _check_directory(path: str) -> FormatCheck:
    folder = Path(path)
    names = set(os.listdir(folder))
    result = FormatCheck(path, DIRECTORY, 0)
    problems: list[str] = []
    tree: dict[str, Any] = {}

    weights = _trainer_weight_files(folder, names, problems)
    model: dict[str, Any] = {}
    for name in weights:
        part = _check_part(folder / name, problems, result)
        if part is not None and isinstance(part.tree, dict):
            model.update(part.tree)
    tree["model"] = model

    for name in TRAINER_PARTS:
        if name not in names:
            problems.append(f"missing {name}")
        elif name.endswith(".json"):
            tree["trainer_state"] = _read_trainer_state(folder / name, problems)
        else:
            part = _check_part(folder / name, problems, result)
            tree[name.removesuffix(".pt")] = part.tree if part else None

    result.bytes = sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())
    result.tree = tree
    result.complete = not problems
    result.reason = "partial: " + "; ".join(problems) if problems else ""
    return result


def _trainer_weight_files(folder: Path, names: set[str], problems: list[str]) -> list[str]:
    for name in TRAINER_WEIGHTS:
        if name in names:
            return [name]
    for name in TRAINER_INDEXES:
        if name in names:
            try:
                index = json.loads((folder / name).read_text(encoding="utf-8"))
                shards = sorted(set(index["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{name} cannot be read ({exc})")
                return []
            missing = [shard for shard in shards if shard not in names]
            if missing:
                problems.append(f"missing weight shards: {', '.join(missing)}")
            return [shard for shard in shards if shard in names]
    problems.append(f"missing weights (one of {', '.join(TRAINER_WEIGHTS)})")
    return []


def _check_part(path: Path, problems: list[str], result: FormatCheck) -> FormatCheck | None:
    part = check_file(path)
    for name in part.blocked:
        if name not in result.blocked:
            result.blocked.append(name)
    if not part.complete:
        problems.append(f"{path.name} {part.reason or 'is not a checkpoint file'}")
        return None
    if part.load_error:
        result.load_error = result.load_error or f"{path.name}: {part.load_error}"
    result.notes.extend(part.notes)
    return part


def _read_trainer_state(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json cannot be read ({exc})")
        return None


# --- errors from torch.load ------------------------------------------------------


def explain_load_error(path: str | os.PathLike[str], error: BaseException) -> str:
    """Turn an error of ``torch.load`` (a bare ``OSError: [Errno 22]`` from mmap, a zip error) into a reason.

    The file is checked again: when it is incomplete, that is the reason.
    """
    try:
        check = check_file(path, legacy_torch_load=False)
    except OSError as exc:
        return f"{os.fspath(path)} cannot be read ({exc})"
    if not check.complete and check.reason:
        return f"{check.reason} (torch.load reported: {_first_line(error)})"
    if check.format == TORCH_LEGACY:
        return "legacy torch format, which torch cannot memory-map: load it with mmap=False"
    if isinstance(error, OSError) and error.errno == errno.EINVAL:
        return (
            f"torch could not memory-map the file ({error}); the file system may not support "
            "mmap or the file changed while it was read; load it with mmap=False"
        )
    return _first_line(error)


__all__ = [
    "DIRECTORY",
    "SAFETENSORS",
    "TORCH_LEGACY",
    "TORCH_ZIP",
    "UNKNOWN",
    "FormatCheck",
    "StorageRef",
    "check_file",
    "detect_format",
    "explain_load_error",
    "is_trainer_directory",
    "sniff_format",
]
