"""Faults injected on demand, per route, for the next N calls.

A route is an RPC method name (``SaveKernel``, ``GetKernelSessionStatus``,
``CreateDatasetVersion``...), ``upload`` (blob upload PUTs) or ``download``
(GETs of output and dataset file URLs). Each injected fault is consumed by
the next matching calls, in the order injected.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

KINDS = {
    "429": "HTTP 429 with a Retry-After header (seconds from retry_after, default 1)",
    "500": "HTTP 500",
    "503": "HTTP 503 (with Retry-After only when retry_after is given)",
    "drop": "the connection is closed without an answer",
    "slow": "the answer is delayed by `seconds`, then served normally",
    "expire": "download: HTTP 403, as from an expired signed URL; upload: HTTP 404 and the upload "
    "session is forgotten, as when it expired",
    "truncate": "download only: full Content-Length header, half the body, then the connection closes",
    "upload-stop": "upload only: the server keeps the first half of the body and answers 503, "
    "so the client probes and resumes",
    "version-failed": "CreateDataset/CreateDatasetVersion(ById) only: the version ends FAILED "
    "after the processing delay",
}

_ROUTE_ONLY = {
    "expire": {"download", "upload"},
    "truncate": {"download"},
    "upload-stop": {"upload"},
    "version-failed": {"CreateDataset", "CreateDatasetVersion", "CreateDatasetVersionById"},
}


@dataclass
class Fault:
    route: str
    kind: str
    times: int = 1
    retry_after: float | None = None
    seconds: float = 1.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Faults:
    """Thread-safe queue of faults; the Python handle on a running emulator."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def inject(
        self,
        route: str,
        kind: str,
        *,
        times: int = 1,
        retry_after: float | None = None,
        seconds: float = 1.0,
    ) -> Fault:
        """Make the next ``times`` calls of ``route`` fail with ``kind`` (see ``KINDS``)."""
        kind = str(kind)
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known kinds: {', '.join(KINDS)}")
        allowed = _ROUTE_ONLY.get(kind)
        if allowed is not None and route not in allowed:
            raise ValueError(f"fault {kind!r} applies only to {sorted(allowed)}, not to {route!r}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        if kind == "429" and retry_after is None:
            retry_after = 1.0
        fault = Fault(route=route, kind=kind, times=times, retry_after=retry_after, seconds=seconds)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_next_dataset_version(self, times: int = 1) -> Fault:
        """Make the next ``times`` dataset versions (new datasets included) end FAILED."""
        return self.inject("CreateDatasetVersion", "version-failed", times=times)

    def take(self, route: str, *, version_failed: bool = False) -> Fault | None:
        """Consume one use of the first fault queued for ``route``, if any.

        ``version-failed`` faults are taken only with ``version_failed=True``
        (by the services that create dataset versions), and only those then.
        """
        with self._lock:
            for fault in self._faults:
                if (fault.kind == "version-failed") == version_failed and self._matches(
                    fault, route
                ):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return Fault(fault.route, fault.kind, 1, fault.retry_after, fault.seconds)
        return None

    @staticmethod
    def _matches(fault: Fault, route: str) -> bool:
        if fault.kind == "version-failed":
            return route in _ROUTE_ONLY["version-failed"]
        return fault.route == route

    def pending(self) -> list[dict[str, object]]:
        """Return the faults not consumed yet."""
        with self._lock:
            return [fault.to_dict() for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
