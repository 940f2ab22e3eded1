"""Injected faults, and which of them the real kaggle client survives on its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.exceptions import ConnectionError, HTTPError

from tests.conftest import EMULATOR_KEY, EMULATOR_USER
from tests.emulator.helpers import (
    dataset_folder,
    kernel_folder,
    status_name,
    wait_for_dataset,
    wait_for_kernel,
)

KERNEL = f"{EMULATOR_USER}/fault-kernel"
DATASET = f"{EMULATOR_USER}/fault-data"


def retry(call: Callable[[], Any], attempts: int = 5) -> tuple[Any, list[Exception]]:
    """A test-local retry for calls the client does not retry itself."""
    errors: list[Exception] = []
    for _ in range(attempts):
        try:
            return call(), errors
        except (HTTPError, ConnectionError) as error:
            # kaggle 2.2.5 raises on a failed output download without closing the response.
            if error.response is not None:
                error.response.close()
            errors.append(error)
            time.sleep(0.05)
    raise AssertionError(f"still failing after {attempts} attempts: {errors}")


def finished_kernel(api, tmp_path: Path) -> None:
    code = "open('model.pt', 'wb').write(b'0123456789' * 1000)\n"
    assert not api.kernels_push(str(kernel_folder(tmp_path, "fault-kernel", code))).error
    assert status_name(wait_for_kernel(api, KERNEL)) == "COMPLETE"


def create_dataset(api, tmp_path: Path, content: bytes = b"payload" * 100) -> Any:
    folder = dataset_folder(tmp_path, "fault-data", {"blob.bin": content})
    return api.dataset_create_new(str(folder), quiet=True)


def test_rate_limit_on_create_version_is_retried_by_client(
    kaggle_api, tmp_path: Path, emulator
) -> None:
    assert create_dataset(kaggle_api, tmp_path).status == "ok"
    wait_for_dataset(kaggle_api, DATASET)
    emulator.faults.inject("CreateDatasetVersion", "429", times=2, retry_after=0.1)
    folder = dataset_folder(tmp_path, "fault-data", {"blob.bin": b"second"})
    answer = kaggle_api.dataset_create_version(str(folder), "after 429", quiet=True)

    assert answer.status == "ok"
    assert emulator.faults.pending() == []


@pytest.mark.parametrize("kind", ["429", "500", "503"])
def test_status_errors_reach_the_caller(kaggle_api, tmp_path: Path, emulator, kind: str) -> None:
    finished_kernel(kaggle_api, tmp_path)
    emulator.faults.inject("GetKernelSessionStatus", kind, times=2)

    answer, errors = retry(lambda: kaggle_api.kernels_status(KERNEL))
    assert status_name(answer) == "COMPLETE"
    assert [error.response.status_code for error in errors] == [int(kind)] * 2
    if kind == "429":
        assert errors[0].response.headers["Retry-After"] == "1"


def test_dropped_connection_on_blob_start_is_retried(kaggle_api, tmp_path: Path, emulator) -> None:
    emulator.faults.inject("StartBlobUpload", "drop")

    assert create_dataset(kaggle_api, tmp_path).status == "ok"
    assert emulator.faults.pending() == []


def test_dropped_push_raises_and_makes_no_version(kaggle_api, tmp_path: Path, emulator) -> None:
    emulator.faults.inject("SaveKernel", "drop")

    with pytest.raises(ConnectionError):
        kaggle_api.kernels_push(str(kernel_folder(tmp_path, "fault-kernel", "print(1)\n")))
    with pytest.raises(HTTPError) as raised:
        kaggle_api.kernels_status(KERNEL)
    assert raised.value.response.status_code == 404


def test_slow_answer_still_arrives(kaggle_api, tmp_path: Path, emulator) -> None:
    finished_kernel(kaggle_api, tmp_path)
    emulator.faults.inject("GetKernelSessionStatus", "slow", seconds=0.3)

    # A caller with a short read timeout gives up; the client, which sets none, waits.
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            f"{emulator.url}/api/v1/kernels.KernelsApiService/GetKernelSessionStatus",
            json={"userName": EMULATOR_USER, "kernelSlug": "fault-kernel"},
            auth=(EMULATOR_USER, EMULATOR_KEY),
            timeout=0.05,
        )
    emulator.faults.inject("GetKernelSessionStatus", "slow", seconds=0.3)
    assert status_name(kaggle_api.kernels_status(KERNEL)) == "COMPLETE"


def test_expired_download_url_fails_then_a_retry_works(
    kaggle_api, tmp_path: Path, emulator
) -> None:
    finished_kernel(kaggle_api, tmp_path)
    emulator.faults.inject("download", "expire")
    out = tmp_path / "out"

    _, errors = retry(lambda: kaggle_api.kernels_output(KERNEL, str(out)))
    assert [error.response.status_code for error in errors] == [403]
    assert (out / "model.pt").read_bytes() == b"0123456789" * 1000


@pytest.mark.slow
def test_truncated_download_is_resumed_by_client(kaggle_api, tmp_path: Path, emulator) -> None:
    finished_kernel(kaggle_api, tmp_path)
    emulator.faults.inject("download", "truncate")
    kaggle_api.kernels_output(KERNEL, str(tmp_path / "out"))

    assert (tmp_path / "out" / "model.pt").read_bytes() == b"0123456789" * 1000
    assert emulator.faults.pending() == []


def test_dropped_download_fails_then_a_retry_works(kaggle_api, tmp_path: Path, emulator) -> None:
    finished_kernel(kaggle_api, tmp_path)
    emulator.faults.inject("download", "drop")

    _, errors = retry(lambda: kaggle_api.kernels_output(KERNEL, str(tmp_path / "out")))
    assert len(errors) == 1
    assert (tmp_path / "out" / "model.pt").stat().st_size == 10000


@pytest.mark.parametrize("kind", ["upload-stop", "503", "429"])
def test_interrupted_upload_is_resumed_by_client(
    kaggle_api, tmp_path: Path, emulator, kind: str
) -> None:
    content = bytes(range(256)) * 40
    emulator.faults.inject("upload", kind, retry_after=0.1 if kind == "429" else None)
    answer = create_dataset(kaggle_api, tmp_path, content)

    assert answer.status == "ok"
    wait_for_dataset(kaggle_api, DATASET)
    kaggle_api.dataset_download_file(DATASET, "blob.bin", path=str(tmp_path / "back"))
    assert (tmp_path / "back" / "blob.bin").read_bytes() == content


def test_failed_upload_raises_and_a_rerun_completes_it(
    kaggle_api, tmp_path: Path, emulator
) -> None:
    folder = dataset_folder(tmp_path, "fault-data", {"blob.bin": b"x" * 3000})
    emulator.faults.inject("upload", "500")

    with pytest.raises(ValueError, match="Upload unsuccessful"):
        kaggle_api.dataset_create_new(str(folder), quiet=True)
    answer = kaggle_api.dataset_create_new(str(folder), quiet=True)
    assert answer.status == "ok"


def test_unavailable_create_version_then_rerun_reuses_uploads(
    kaggle_api, tmp_path: Path, emulator
) -> None:
    assert create_dataset(kaggle_api, tmp_path).status == "ok"
    wait_for_dataset(kaggle_api, DATASET)
    folder = dataset_folder(tmp_path, "fault-data", {"blob.bin": b"day two"})
    emulator.faults.inject("CreateDatasetVersion", "503")

    with pytest.raises(HTTPError) as raised:
        kaggle_api.dataset_create_version(str(folder), "day two", quiet=True)
    assert raised.value.response.status_code == 503
    assert kaggle_api.dataset_create_version(str(folder), "day two", quiet=True).status == "ok"
    assert wait_for_dataset(kaggle_api, DATASET) == "ready"


def test_unknown_fault_kind_is_rejected(emulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.faults.inject("SaveKernel", "418")
    with pytest.raises(ValueError, match="applies only to"):
        emulator.faults.inject("SaveKernel", "truncate")
