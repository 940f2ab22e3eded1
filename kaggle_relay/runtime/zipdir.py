"""A minimal reader of a zip archive's central directory, for torch checkpoints.

``zipfile.ZipFile`` does the same job but builds a full ``ZipInfo`` per entry.
In bench/bench_scan.py (200 small checkpoints) that was about a third of
the validation time. This reader parses only the fields a completeness check needs, supports
zip64 (torch writes it above 4 GiB) and reads stored or deflated entries.
Anything else it does not expect raises ``zipfile.BadZipFile``, the same
error ``zipfile`` raises, so callers handle one type.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from typing import BinaryIO, NamedTuple

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_EOCD_SIZE = 22
_CENTRAL_SIZE = 46
_LOCAL_SIZE = 30
# The end record may be followed by an archive comment of up to 64 KiB.
_TAIL = _EOCD_SIZE + 0xFFFF
_ZIP64_EXTRA = 0x0001
_FULL32 = 0xFFFFFFFF
# The fixed part of a central directory record: signature, method, CRC-32, compressed and
# uncompressed size, name, extra and comment lengths, and the local header's offset.
_CENTRAL_RECORD = struct.Struct("<4s6xH4xIIIHHH8xI")
_new_tuple = tuple.__new__


class ZipEntry(NamedTuple):
    """One central directory record; field names follow ``zipfile.ZipInfo``."""

    filename: str
    header_offset: int
    compress_size: int
    file_size: int
    compress_type: int
    CRC: int


def read_directory(handle: BinaryIO, size: int) -> dict[str, ZipEntry]:
    """Return the entries of the zip archive open in ``handle`` (``size`` bytes long), by name."""
    tail_start = max(0, size - _TAIL)
    handle.seek(tail_start)
    tail = handle.read(size - tail_start)
    end = tail.rfind(_EOCD)
    if end < 0 or end + _EOCD_SIZE > len(tail):
        raise zipfile.BadZipFile("end of central directory record not found")
    disk, directory_disk = struct.unpack_from("<HH", tail, end + 4)
    if disk or directory_disk:
        raise zipfile.BadZipFile("the end record names a multi-disk archive")
    count, directory_size, directory_offset = struct.unpack_from("<HII", tail, end + 10)
    directory_end = tail_start + end
    has_locator = end >= 20 and tail[end - 20 : end - 16] == _EOCD64_LOCATOR
    if has_locator or _FULL32 in (directory_size, directory_offset) or count == 0xFFFF:
        # torch writes zip64 end records even for small files; the directory ends where they start.
        found = _zip64_end(handle, tail, end, tail_start)
        for short, wide in zip((count, directory_size, directory_offset), found[:3], strict=True):
            if short not in (wide, 0xFFFF, _FULL32):
                raise zipfile.BadZipFile("the end record and the zip64 end record disagree")
        count, directory_size, directory_offset, directory_end = found
    if directory_offset + directory_size != directory_end:
        # torch's reader (miniz) rejects such a file, so it must not pass here.
        raise zipfile.BadZipFile(
            f"central directory of {directory_size} bytes at offset {directory_offset} does not end "
            f"where the end record starts (offset {directory_end})"
        )
    if directory_offset >= tail_start:
        # Usual for a checkpoint: the directory was read with the tail, so it is not read again.
        directory = tail[directory_offset - tail_start : directory_end - tail_start]
    else:
        handle.seek(directory_offset)
        directory = handle.read(directory_size)
    return _parse_entries(directory, count)


def _zip64_end(handle: BinaryIO, tail: bytes, end: int, tail_start: int) -> tuple[int, int, int, int]:
    locator = end - 20
    if locator < 0 or tail[locator : locator + 4] != _EOCD64_LOCATOR:
        raise zipfile.BadZipFile("zip64 end of central directory locator not found")
    record_disk, record_offset, disks = struct.unpack_from("<IQI", tail, locator + 4)
    if record_disk != 0 or disks != 1:
        raise zipfile.BadZipFile("the zip64 end locator names a multi-disk archive")
    if record_offset + 56 > tail_start + locator:
        raise zipfile.BadZipFile("the zip64 end locator points past itself")
    if record_offset >= tail_start:
        record = tail[record_offset - tail_start : record_offset - tail_start + 56]
    else:
        handle.seek(record_offset)
        record = handle.read(56)
    if len(record) < 56 or record[:4] != b"PK\x06\x06":
        raise zipfile.BadZipFile("zip64 end of central directory record not found")
    (record_size,) = struct.unpack_from("<Q", record, 4)
    if record_offset + 12 + record_size != tail_start + locator:
        raise zipfile.BadZipFile("the zip64 end record does not end where its locator starts")
    count_here, count, directory_size, directory_offset = struct.unpack_from("<QQQQ", record, 24)
    if count_here != count:
        raise zipfile.BadZipFile("the zip64 end record names a multi-disk archive")
    return count, directory_size, directory_offset, record_offset


def _parse_entries(directory: bytes, count: int) -> dict[str, ZipEntry]:
    try:
        entries, position = _parse_records(directory, count)
    except struct.error as exc:
        raise zipfile.BadZipFile(f"central directory ends inside a record ({exc})") from None
    if position != len(directory):
        raise zipfile.BadZipFile(
            f"central directory size {len(directory)} does not match its {count} records ({position} bytes)"
        )
    return entries


def _parse_records(directory: bytes, count: int) -> tuple[dict[str, ZipEntry], int]:
    entries: dict[str, ZipEntry] = {}
    unpack_record = _CENTRAL_RECORD.unpack_from
    position = 0
    for _ in range(count):
        # A record cut short raises struct.error, which _parse_entries reports.
        (signature, method, crc, compressed, uncompressed, name_length, extra_length, comment_length, offset) = (
            unpack_record(directory, position)
        )
        if signature != _CENTRAL:
            raise zipfile.BadZipFile(f"bad central directory record at offset {position}")
        name_start = position + _CENTRAL_SIZE
        extra_start = name_start + name_length
        name = str(directory[name_start:extra_start], "utf-8", "replace")
        if compressed == _FULL32 or uncompressed == _FULL32 or offset == _FULL32:
            extra = directory[extra_start : extra_start + extra_length]
            uncompressed, compressed, offset = _zip64_sizes(extra, uncompressed, compressed, offset)
        entries[name] = _new_tuple(ZipEntry, (name, offset, compressed, uncompressed, method, crc))
        position = extra_start + extra_length + comment_length
    return entries, position


def _zip64_sizes(extra: bytes, uncompressed: int, compressed: int, offset: int) -> tuple[int, int, int]:
    # The zip64 extra field lists, in this order, only the values whose 32-bit field is full.
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        if kind == _ZIP64_EXTRA:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, position + 4))
            if uncompressed == _FULL32 and values:
                uncompressed = values.pop(0)
            if compressed == _FULL32 and values:
                compressed = values.pop(0)
            if offset == _FULL32 and values:
                offset = values.pop(0)
            return uncompressed, compressed, offset
        position += 4 + length
    raise zipfile.BadZipFile("zip64 sizes missing from an entry's extra field")


def read_entry(handle: BinaryIO, entry: ZipEntry) -> bytes:
    """Read and CRC-check one stored or deflated entry."""
    handle.seek(entry.header_offset)
    header = handle.read(_LOCAL_SIZE)
    if len(header) < _LOCAL_SIZE or header[:4] != _LOCAL:
        raise zipfile.BadZipFile(f"bad local header for {entry.filename}")
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    handle.seek(entry.header_offset + _LOCAL_SIZE + name_length + extra_length)
    data = handle.read(entry.compress_size)
    if len(data) < entry.compress_size:
        raise zipfile.BadZipFile(f"{entry.filename} is cut short")
    if entry.compress_type == zipfile.ZIP_DEFLATED:
        data = zlib.decompress(data, -15)
    elif entry.compress_type != zipfile.ZIP_STORED:
        raise zipfile.BadZipFile(f"{entry.filename} uses compression method {entry.compress_type}")
    if zlib.crc32(data) != entry.CRC:
        raise zipfile.BadZipFile(f"CRC check failed for {entry.filename}")
    return data
