"""Kernels on Kaggle: push a version, read its status, wait for it, download its outputs.

Every status read and download is tied to a version number: right after a
push, Kaggle may still respond for the previous version, so a reference
without a version is rejected. A push is never retried after a failure that
may have reached Kaggle, because each push may start a session.
``push_kernel`` also rejects a push while the kernel's latest version is
queued or running, because the API has no call to cancel it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_relay.errors import (
    KaggleApiError,
    KaggleNotFoundError,
    KernelRunError,
    WaitTimeoutError,
)
from kaggle_relay.relay import client, retry
from kaggle_relay.relay.kernel_metadata import METADATA_NAME, validate_kernel_metadata
from kaggle_relay.relay.outputs import Outputs, download_outputs
from kaggle_relay.relay.refs import KernelRef, wire_enum_name
from kaggle_relay.runtime import atomic

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

__all__ = [
    "KernelState",
    "KernelStatus",
    "Outputs",
    "PushResult",
    "download_outputs",
    "kernel_status",
    "latest_version",
    "push_kernel",
    "validate_kernel_metadata",
    "wait_for_kernel",
]


class KernelStatus(str, Enum):
    """The state of a kernel version's session (Kaggle's KernelWorkerStatus)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    ERROR = "error"
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_ACKNOWLEDGED = "cancel_acknowledged"
    NEW_SCRIPT = "new_script"

    @property
    def is_terminal(self) -> bool:
        """True once the session has ended and its outputs (if any) are final."""
        return self in (KernelStatus.COMPLETE, KernelStatus.ERROR, KernelStatus.CANCEL_ACKNOWLEDGED)

    @property
    def is_active(self) -> bool:
        """True while a session is queued or running, when no other push may start."""
        return self in (KernelStatus.QUEUED, KernelStatus.RUNNING, KernelStatus.CANCEL_REQUESTED)

    @classmethod
    def parse(cls, value: object) -> KernelStatus:
        """Read a status in any spelling the client returns.

        Accepts the kagglesdk enum, ``"COMPLETE"``, ``"complete"``,
        ``"KERNEL_WORKER_STATUS_COMPLETE"`` and ``"KernelWorkerStatus.COMPLETE"``.
        """
        text = wire_enum_name(value, "KERNEL_WORKER_STATUS_")
        try:
            return cls[text]
        except KeyError:
            raise ValueError(f"unknown kernel status {value!r}") from None


@dataclass
class KernelState:
    """The status of one kernel version."""

    ref: KernelRef
    status: KernelStatus
    failure_message: str = ""


@dataclass
class PushResult:
    """The version a push created; ``ref.version`` is the number of the session it started."""

    ref: KernelRef
    url: str = ""
    #: Sources Kaggle did not attach (the session runs without them).
    invalid_sources: list[str] = field(default_factory=list)


# --- status ------------------------------------------------------------------


def kernel_status(api: KaggleApi, ref: KernelRef) -> KernelState:
    """Return the status of version ``ref.version``; the reference must carry it."""
    ref.require_version()
    response = retry.run("read", "GetKernelSessionStatus", api.kernels_status, str(ref), resource=str(ref))
    return KernelState(
        ref=ref,
        status=KernelStatus.parse(response.status),
        failure_message=response.failure_message or "",
    )


def latest_version(api: KaggleApi, ref: KernelRef) -> int | None:
    """Return the kernel's newest version number, or None when the kernel does not exist yet."""
    try:
        response = retry.run("read", "GetKernel", _get_kernel, api, ref.unversioned(), resource=ref.id)
    except KaggleNotFoundError:
        return None
    number = response.metadata.current_version_number if response.metadata else 0
    return int(number) or None


def _get_kernel(api: KaggleApi, ref: KernelRef) -> Any:
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    request = ApiGetKernelRequest()
    request.user_name = ref.owner
    request.kernel_slug = ref.slug
    with api.build_kaggle_client() as kaggle:
        return kaggle.kernels.kernels_api_client.get_kernel(request)


def wait_for_kernel(
    api: KaggleApi,
    ref: KernelRef,
    *,
    timeout: float,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> KernelState:
    """Poll version ``ref.version`` until its session ends; return the final state.

    A version that ended in ``error`` is returned, not raised: its outputs may
    still hold a valid checkpoint. Raises WaitTimeoutError after ``timeout``
    seconds. A 404 right after the push counts as "not visible yet".
    """
    ref.require_version()
    start = clock()
    last = "unknown"
    while True:
        try:
            state = kernel_status(api, ref)
        except KaggleNotFoundError:
            log.debug("kernel %s is not visible yet", ref)
        else:
            if state.status.is_terminal:
                log.info("kernel %s ended %s", ref, state.status.value)
                return state
            last = state.status.value
        waited = clock() - start
        if waited + interval > timeout:
            raise WaitTimeoutError(f"kernel {ref} to finish", waited, last)
        sleep(interval)


# --- push --------------------------------------------------------------------


def push_kernel(
    api: KaggleApi,
    folder: Path,
    *,
    dataset_sources: list[str] | None = None,
    machine_shape: str | None = None,
    timeout_seconds: int | None = None,
) -> PushResult:
    """Push the kernel in ``folder`` and start a session; return the new version.

    ``dataset_sources`` and ``machine_shape`` replace the metadata's values
    (``machine_shape="none"`` removes the accelerator). The folder is not
    changed: the pushed copy is staged in a temporary folder. Raises
    KernelRunError when the latest version is still queued or running.
    """
    meta = _push_metadata(api, folder, dataset_sources, machine_shape)
    ref = KernelRef.parse(meta["id"])
    _refuse_if_active(api, ref)
    with tempfile.TemporaryDirectory(prefix="kaggle-relay-push-") as staging:
        stage = Path(staging)
        _stage(folder, stage, meta)
        timeout = str(timeout_seconds) if timeout_seconds else None
        response = retry.run("push", "SaveKernel", api.kernels_push, str(stage), timeout, resource=ref.id)
    return _push_result(ref, response)


def _push_metadata(
    api: KaggleApi, folder: Path, dataset_sources: list[str] | None, machine_shape: str | None
) -> dict[str, Any]:
    meta = validate_kernel_metadata(folder, username=client.username(api))
    if dataset_sources is None and machine_shape is None:
        return meta
    if dataset_sources is not None:
        meta["dataset_sources"] = list(dataset_sources)
    if machine_shape is not None:
        shape = None if machine_shape == "none" else machine_shape
        meta["machine_shape"] = shape
        meta["enable_gpu"] = bool(shape and shape.startswith("Nvidia"))
        meta["enable_tpu"] = bool(shape and shape.startswith("Tpu"))
        if shape is None:
            meta.pop("machine_shape")
    # Check the result again: the overrides must obey the same rules.
    with tempfile.TemporaryDirectory(prefix="kaggle-relay-check-") as staging:
        _stage(folder, Path(staging), meta)
        return validate_kernel_metadata(Path(staging), username=client.username(api))


def _refuse_if_active(api: KaggleApi, ref: KernelRef) -> None:
    version = latest_version(api, ref)
    if version is None:
        return
    state = kernel_status(api, ref.with_version(version))
    if state.status.is_active:
        raise KernelRunError(
            f"kernel {ref} version {version} is {state.status.value}; refusing to push another version "
            "while it runs (each push starts a session, and the API cannot cancel one)",
            kernel=ref.id,
            version=version,
            status=state.status.value,
        )


def _stage(folder: Path, stage: Path, meta: dict[str, Any]) -> None:
    code = Path(meta["code_file"])
    (stage / code).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / code, stage / code)
    atomic.write_text(stage / METADATA_NAME, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def _push_result(ref: KernelRef, response: Any) -> PushResult:
    version = int(response.version_number or 0)
    if version < 1:
        raise KaggleApiError(
            f"SaveKernel for {ref} returned no version number; the push may not have started a session",
            call="SaveKernel",
            resource=ref.id,
            hint=f"check the kernel's versions on Kaggle before pushing {ref} again",
        )
    invalid = [
        *(response.invalid_dataset_sources or []),
        *(response.invalid_kernel_sources or []),
        *(response.invalid_competition_sources or []),
        *(response.invalid_model_sources or []),
    ]
    if invalid:
        log.error("kernel %s version %d runs without these sources, which Kaggle rejected: %s", ref, version, invalid)
    pushed = ref.with_version(version)
    log.info("pushed %s", pushed)
    return PushResult(ref=pushed, url=response.url or "", invalid_sources=[str(item) for item in invalid])
