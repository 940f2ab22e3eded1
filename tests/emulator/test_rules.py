"""Metadata rules the emulator enforces itself, sent past the client's own checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetRequest, ApiDatasetNewFile
from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest
from requests.exceptions import HTTPError

from tests.conftest import EMULATOR_USER
from tests.emulator.helpers import kernel_folder, wait_for_kernel

GOOD_DATASET = {
    "owner_slug": EMULATOR_USER,
    "slug": "rules-data",
    "title": "Rules data",
    "license_name": "CC0-1.0",
}


def create_dataset_raw(api: Any, tmp_path: Path, **fields: Any) -> Any:
    """Send CreateDataset with one uploaded file, bypassing the client's metadata checks."""
    blob = tmp_path / f"blob-{len(list(tmp_path.iterdir()))}.txt"
    blob.write_text("data")
    from kaggle.api.kaggle_api_extended import ResumableUploadContext
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType

    with ResumableUploadContext() as context:
        token = api._upload_blob(str(blob), True, ApiBlobType.DATASET, context)
    request = ApiCreateDatasetRequest()
    for name, value in {**GOOD_DATASET, **fields}.items():
        setattr(request, name, value)
    new_file = ApiDatasetNewFile()
    new_file.token = token
    request.files = [new_file]
    with api.build_kaggle_client() as client:
        return client.datasets.dataset_api_client.create_dataset(request)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"slug": "abcd"}, "between 6 and 50 characters"),
        ({"slug": "INSERT_SLUG_HERE"}, "placeholder"),
        ({"slug": "Has Capitals"}, "lower-case letters"),
        ({"title": "abcd"}, "title 'abcd' must be between 6 and 50"),
        ({"subtitle": "ten chars!"}, "subtitle must be between 20 and 80"),
        ({"license_name": "two-licenses"}, "Unknown license"),
    ],
)
def test_server_rejects_invalid_dataset_metadata(
    kaggle_api, tmp_path: Path, fields, message
) -> None:
    answer = create_dataset_raw(kaggle_api, tmp_path, **fields)

    assert answer.status == "error"
    assert message in answer.error


def test_server_accepts_valid_dataset_metadata(kaggle_api, tmp_path: Path) -> None:
    assert create_dataset_raw(kaggle_api, tmp_path).status == "ok"


def test_server_rejects_short_kernel_slug(kaggle_api) -> None:
    request = ApiSaveKernelRequest()
    request.slug = f"{EMULATOR_USER}/abcd"
    request.text, request.language, request.kernel_type = "print(1)", "python", "script"

    with (
        kaggle_api.build_kaggle_client() as client,
        pytest.raises(HTTPError, match="at least five"),
    ):
        client.kernels.kernels_api_client.save_kernel(request)


def test_session_timeout_above_kaggle_limit_is_rejected(kaggle_api, tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, "rules-kernel", "print(1)\n")

    with pytest.raises(HTTPError, match="sessionTimeoutSeconds 50000"):
        kaggle_api.kernels_push(str(folder), timeout="50000")


def test_integer_boolean_crashes_the_client_before_any_call(kaggle_api, tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, "rules-kernel", "print(1)\n", enable_gpu=1)

    with pytest.raises(TypeError):
        kaggle_api.kernels_push(str(folder))


def test_missing_enable_internet_turns_internet_on(kaggle_api, tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, "rules-kernel", "print(1)\n")
    meta_path = folder / "kernel-metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["enable_internet"]
    meta_path.write_text(json.dumps(meta))
    kaggle_api.kernels_push(str(folder))
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/rules-kernel")
    kaggle_api.kernels_pull(
        f"{EMULATOR_USER}/rules-kernel", str(tmp_path / "pulled"), metadata=True
    )

    pulled = json.loads((tmp_path / "pulled" / "kernel-metadata.json").read_text())
    assert pulled["enable_internet"] is True
