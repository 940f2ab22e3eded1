"""Small pieces of the Kaggle wire protocol shared by the emulator's services."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from email.utils import formatdate

KERNEL_STATUSES = (
    "QUEUED",
    "RUNNING",
    "COMPLETE",
    "ERROR",
    "CANCEL_REQUESTED",
    "CANCEL_ACKNOWLEDGED",
)
KERNEL_END_STATUSES = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")


class ApiError(Exception):
    """An HTTP error response: JSON ``{"code": status, "message": message}``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def iso_time(epoch: float) -> str:
    """Format a Unix time the way Kaggle does: ``2025-01-01T00:00:00.000Z``."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


def now() -> float:
    return time.time()


_VERSION_LABEL = re.compile(r"^v(\d+)$")


def parse_version_label(label: str | None) -> int | None:
    """Turn ``"v3"`` into 3; None or ``""`` means the latest version.

    Kaggle responds 404 to a bare number, and so does the emulator.
    """
    if not label:
        return None
    match = _VERSION_LABEL.match(label)
    if match is None:
        raise ApiError(404, f"version {label!r} not found: version labels look like 'v3'")
    return int(match.group(1))


def page(items: list, body: dict, cap: int, default_size: int = 20) -> tuple[list, str]:
    """Cut one page out of ``items`` from the request's pageToken and pageSize.

    The page token is the offset written as a decimal string; the returned
    token is empty on the last page. The page size is capped at ``cap``.
    """
    token = body.get("pageToken") or "0"
    try:
        start = int(token)
    except ValueError:
        raise ApiError(400, f"invalid page token {token!r}") from None
    size = int(body.get("pageSize") or default_size)
    size = max(1, min(size, cap))
    chunk = items[start : start + size]
    end = start + len(chunk)
    return chunk, str(end) if end < len(items) else ""


def split_ref(ref: str, what: str) -> tuple[str, str, int | None]:
    """Split ``owner/slug`` or ``owner/slug/N`` into its parts."""
    parts = ref.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ApiError(400, f"invalid {what} reference {ref!r}: use owner/slug or owner/slug/N")
    version = None
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise ApiError(400, f"invalid {what} reference {ref!r}: the version must be a number")
        version = int(parts[2])
    return parts[0], parts[1], version
