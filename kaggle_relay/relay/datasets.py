"""Datasets on Kaggle: check metadata, create or version, wait for READY, list files.

Rules worth knowing (kaggle client 2.2.x and Kaggle):

- A new version right after the previous one can get HTTP 403 while Kaggle
  still processes the previous one. ``publish_folder`` waits for READY of
  the latest version before it creates the next, and reads a 403 on
  CreateDatasetVersion as "still processing" (wait, then try again), not as
  bad credentials.
- CreateDatasetVersion returns no version number. The relay writes a marker
  (the run id) into the version notes and finds the version by it, which is
  also how a create that may have reached Kaggle before a failure is
  detected before another one is sent. A new dataset's first version has no
  notes, so its description carries the marker.
- The client's default ``dir_mode`` ("skip") drops sub-folders without a
  word. The relay uploads with ``dir_mode="zip"``, which keeps them, and
  callers check the READY version's listing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_relay.errors import (
    ConfigError,
    DatasetProcessingError,
    DatasetVersionFailedError,
    KaggleApiError,
    KaggleNotFoundError,
    WaitTimeoutError,
)
from kaggle_relay.relay import client, retry
from kaggle_relay.relay.refs import SLUG_PATTERN, DatasetRef, wire_enum_name
from kaggle_relay.runtime import atomic

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

METADATA_NAME = "dataset-metadata.json"
LIST_PAGE_SIZE = 200
#: How many times a create waits out "still processing" (HTTP 403) before giving up.
MAX_PROCESSING_WAITS = 3


class DatasetStatus(str, Enum):
    """The processing state of a dataset version (Kaggle's DatabundleVersionStatus)."""

    NOT_YET_PERSISTED = "not_yet_persisted"
    BLOBS_RECEIVED = "blobs_received"
    BLOBS_DECOMPRESSED = "blobs_decompressed"
    BLOBS_COPIED_TO_SDS = "blobs_copied_to_sds"
    INDIVIDUAL_BLOBS_COMPRESSED = "individual_blobs_compressed"
    READY = "ready"
    FAILED = "failed"
    DELETED = "deleted"
    REPROCESSING = "reprocessing"

    @property
    def is_processing(self) -> bool:
        return self not in (DatasetStatus.READY, DatasetStatus.FAILED, DatasetStatus.DELETED)

    @classmethod
    def parse(cls, value: object) -> DatasetStatus:
        """Read a status as the kagglesdk enum, ``"READY"``, ``"ready"`` or with a type prefix."""
        text = wire_enum_name(value, "DATABUNDLE_VERSION_STATUS_")
        if not text:
            # An absent status reads back as the enum's zero value.
            return cls.NOT_YET_PERSISTED
        try:
            return cls[text]
        except KeyError:
            raise ValueError(f"unknown dataset version status {value!r}") from None


@dataclass
class DatasetVersion:
    """One version of a dataset."""

    number: int
    status: DatasetStatus
    notes: str = ""


# --- metadata ------------------------------------------------------------------


def validate_dataset_metadata(meta: dict[str, Any], *, username: str) -> None:
    """Check dataset metadata against the client's and Kaggle's rules, before any upload.

    Raises ConfigError naming the field and the rule.
    """
    ref = _check_dataset_id(meta, username)
    _check_length(meta, "title", 6, 50, placeholder="INSERT_TITLE_HERE")
    if meta.get("subtitle"):
        _check_length(meta, "subtitle", 20, 80)
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        raise _invalid("licenses", "exactly one license is required", '"licenses": [{"name": "CC0-1.0"}]')
    if not isinstance(licenses[0], dict) or not str(licenses[0].get("name") or "").strip():
        raise _invalid("licenses", "the license needs a 'name'", '"licenses": [{"name": "CC0-1.0"}]')
    keywords = meta.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(item, str) for item in keywords):
        raise _invalid("keywords", "must be a list of strings", '"keywords": []')
    log.debug("dataset metadata for %s is valid", ref)


def _check_dataset_id(meta: dict[str, Any], username: str) -> str:
    text = meta.get("id")
    if not isinstance(text, str) or "/" not in text:
        raise _invalid("id", "must be 'owner/slug'", f'"id": "{username}/relay-handoff"')
    owner, _, slug = text.partition("/")
    if slug == "INSERT_SLUG_HERE":
        raise _invalid("id", "still the template placeholder INSERT_SLUG_HERE", "write the dataset's slug")
    if "/" in slug:
        raise _invalid("id", f"{text!r} must not carry a version", f'"id": "{owner}/{slug.split("/")[0]}"')
    if not SLUG_PATTERN.match(slug):
        raise _invalid(
            "id", f"slug {slug!r} must be lowercase letters, digits and single hyphens (no spaces or capitals)",
            f'"id": "{owner}/{_suggest_slug(slug)}"',
        )
    if not 6 <= len(slug) <= 50:
        raise _invalid("id", f"slug {slug!r} has {len(slug)} characters; it needs 6 to 50", "choose a longer or shorter slug")
    if username and owner != username:
        raise _invalid("id", f"owner {owner!r} is not the authenticated user {username!r}", f'"id": "{username}/{slug}"')
    return text


def _check_length(meta: dict[str, Any], key: str, low: int, high: int, *, placeholder: str = "") -> None:
    value = meta.get(key)
    if not isinstance(value, str):
        raise _invalid(key, "missing", f"write a {key} of {low} to {high} characters")
    if placeholder and value == placeholder:
        raise _invalid(key, f"still the template placeholder {placeholder}", f"write a {key} of {low} to {high} characters")
    if not low <= len(value) <= high:
        raise _invalid(key, f"{value!r} has {len(value)} characters; it needs {low} to {high}", f"write a {key} of {low} to {high} characters")


def _suggest_slug(slug: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-") or "relay-handoff"


def _invalid(field: str, rule: str, hint: str) -> ConfigError:
    return ConfigError(f"{METADATA_NAME}: {field}: {rule}", field=field, hint=hint)


# --- reading -------------------------------------------------------------------


def _get_dataset(api: KaggleApi, ref: DatasetRef) -> Any:
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    request = ApiGetDatasetRequest()
    request.owner_slug = ref.owner
    request.dataset_slug = ref.slug
    with api.build_kaggle_client() as kaggle:
        return kaggle.datasets.dataset_api_client.get_dataset(request)


def _read_dataset(api: KaggleApi, ref: DatasetRef) -> Any | None:
    try:
        return retry.run("read", "GetDataset", _get_dataset, api, ref.unversioned(), resource=ref.id)
    except KaggleNotFoundError:
        return None


def dataset_exists(api: KaggleApi, ref: DatasetRef) -> bool:
    return _read_dataset(api, ref) is not None


def _versions(dataset: Any) -> list[DatasetVersion]:
    versions = [
        DatasetVersion(int(item.version_number), DatasetStatus.parse(item.status or ""), item.version_notes or "")
        for item in dataset.versions or []
    ]
    return sorted(versions, key=lambda version: version.number)


def latest_version(api: KaggleApi, ref: DatasetRef) -> DatasetVersion | None:
    """Return the dataset's current version, or None when the dataset does not exist."""
    dataset = _read_dataset(api, ref)
    if dataset is None:
        return None
    return _version_of(api, ref, dataset, int(dataset.current_version_number or 0))


def _version_of(api: KaggleApi, ref: DatasetRef, dataset: Any, number: int) -> DatasetVersion | None:
    for version in _versions(dataset):
        if version.number == number:
            return version
    if number and number == int(dataset.current_version_number or 0):
        # No per-version entry: the dataset status is the current version's status.
        status = retry.run("read", "GetDatasetStatus", api.dataset_status, ref.id, resource=ref.id)
        return DatasetVersion(number, DatasetStatus.parse(status))
    return None


def find_version_by_notes(api: KaggleApi, ref: DatasetRef, marker: str) -> DatasetVersion | None:
    """Return the newest version whose notes contain ``marker``, or None."""
    if not marker:
        raise ValueError("find_version_by_notes needs a non-empty marker")
    dataset = _read_dataset(api, ref)
    if dataset is None:
        return None
    for version in reversed(_versions(dataset)):
        if marker in version.notes:
            return version
    # The first version of a new dataset has no notes; its description carries the marker.
    if int(dataset.current_version_number or 0) == 1 and marker in (dataset.description or ""):
        return _version_of(api, ref, dataset, 1)
    return None


def list_version_files(api: KaggleApi, ref: DatasetRef) -> dict[str, int]:
    """Return name -> size in bytes of every file of version ``ref.version``, all pages."""
    ref.require_version()
    files: dict[str, int] = {}
    token: str | None = None
    while True:
        response = retry.run(
            "read", "ListDatasetFiles", api.dataset_list_files, str(ref), token, LIST_PAGE_SIZE, resource=str(ref)
        )
        for item in response.dataset_files or []:
            files[str(item.name)] = int(item.total_bytes or 0)
        next_token = response.next_page_token or None
        if not next_token or next_token == token:
            return files
        token = next_token


# --- waiting -------------------------------------------------------------------


def wait_for_ready(
    api: KaggleApi,
    ref: DatasetRef,
    *,
    timeout: float,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DatasetVersion:
    """Poll version ``ref.version`` until it is READY; return it.

    Raises DatasetVersionFailedError when it ends FAILED (or DELETED), and
    WaitTimeoutError after ``timeout`` seconds. A version Kaggle does not
    list yet counts as still processing.
    """
    number = ref.require_version()
    start = clock()
    last = "not listed yet"
    while True:
        dataset = _read_dataset(api, ref)
        version = _version_of(api, ref, dataset, number) if dataset is not None else None
        if version is not None:
            if version.status is DatasetStatus.READY:
                log.info("dataset %s is ready", ref)
                return version
            if not version.status.is_processing:
                raise DatasetVersionFailedError(
                    ref.id, number, f"dataset {ref.id} version {number} ended {version.status.name}; "
                    "publish again (a new version) or check the files on Kaggle",
                )
            last = version.status.name
        waited = clock() - start
        if waited + interval > timeout:
            raise WaitTimeoutError(f"dataset {ref} to become READY", waited, last)
        sleep(interval)


# --- publishing ------------------------------------------------------------------


@dataclass(frozen=True)
class PublishWaits:
    """How long to wait for the previous version before creating a new one."""

    timeout: float = 1800.0
    interval: float = 15.0


def publish_folder(
    api: KaggleApi,
    ref: DatasetRef,
    folder: Path,
    *,
    title: str,
    notes: str,
    license_name: str = "CC0-1.0",
    private: bool = True,
    marker: str = "",
    progress: bool = False,
    waits: PublishWaits = PublishWaits(),
    sleep: Callable[[float], None] = time.sleep,
) -> DatasetRef:
    """Upload every file of ``folder`` as a new version of ``ref`` (or as a new dataset).

    ``marker`` (default: ``notes``) identifies this publication: if a version
    carrying it already exists, nothing is uploaded and that version is
    returned. Writes ``dataset-metadata.json`` into ``folder``. Returns the
    reference with the version created; it may still be processing.
    """
    marker = marker or notes
    meta = {"id": ref.id, "title": title, "licenses": [{"name": license_name}]}
    validate_dataset_metadata(meta, username=client.username(api))
    existing = find_version_by_notes(api, ref, marker)
    if existing is not None:
        log.warning("dataset %s already has version %d for %r; not creating another", ref.id, existing.number, marker)
        return ref.with_version(existing.number)
    if not dataset_exists(api, ref):
        meta["description"] = f"Checkpoint handoff published by kaggle-relay.\n\n{notes}"
        _write_metadata(folder, meta)
        return _create_dataset(api, ref, folder, marker, private=private, progress=progress, sleep=sleep)
    _write_metadata(folder, meta)
    return _create_version(api, ref, folder, notes, marker, progress=progress, waits=waits, sleep=sleep)


def _write_metadata(folder: Path, meta: dict[str, Any]) -> None:
    # kaggle 2.2.5 reads dataset-metadata.json with the platform encoding (open() without one),
    # so non-ASCII text is written as JSON escapes, which read the same in any encoding.
    atomic.write_text(folder / METADATA_NAME, json.dumps(meta, indent=2, ensure_ascii=True) + "\n")


def _create_dataset(
    api: KaggleApi, ref: DatasetRef, folder: Path, marker: str, *, private: bool, progress: bool,
    sleep: Callable[[float], None],
) -> DatasetRef:
    def send() -> None:
        client.call(
            "CreateDataset", api.dataset_create_new, str(folder),
            public=not private, quiet=not progress, dir_mode="zip", resource=ref.id,
        )

    found = _create_unless_found(api, ref, marker, "CreateDataset", send, sleep)
    if found is not None:
        return found
    log.info("created dataset %s", ref.id)
    return ref.with_version(1)


def _create_version(
    api: KaggleApi, ref: DatasetRef, folder: Path, notes: str, marker: str, *, progress: bool,
    waits: PublishWaits, sleep: Callable[[float], None],
) -> DatasetRef:
    error: DatasetProcessingError | None = None
    for _ in range(MAX_PROCESSING_WAITS):
        _wait_for_previous(api, ref, waits, sleep)
        try:
            return _send_version(api, ref, folder, notes, marker, progress=progress, sleep=sleep)
        except DatasetProcessingError as processing:
            log.warning("%s; waiting for READY before trying again", processing)
            error = processing
    assert error is not None
    raise error


def _wait_for_previous(api: KaggleApi, ref: DatasetRef, waits: PublishWaits, sleep: Callable[[float], None]) -> None:
    previous = latest_version(api, ref)
    if previous is None:
        return
    if previous.status.is_processing:
        log.info("waiting for %s version %d to become READY before a new version", ref.id, previous.number)
        wait_for_ready(api, ref.with_version(previous.number), timeout=waits.timeout, interval=waits.interval, sleep=sleep)
    elif previous.status is not DatasetStatus.READY:
        log.warning("the latest version %d of %s ended %s", previous.number, ref.id, previous.status.name)


def _send_version(
    api: KaggleApi, ref: DatasetRef, folder: Path, notes: str, marker: str, *, progress: bool,
    sleep: Callable[[float], None],
) -> DatasetRef:
    before = latest_version(api, ref)

    def send() -> None:
        client.call(
            "CreateDatasetVersion", api.dataset_create_version, str(folder), notes,
            quiet=not progress, dir_mode="zip", resource=ref.id, forbidden_means_processing=True,
        )

    found = _create_unless_found(api, ref, marker, "CreateDatasetVersion", send, sleep)
    if found is not None:
        return found
    return _created_version(api, ref, marker, before)


def _create_unless_found(
    api: KaggleApi, ref: DatasetRef, marker: str, call: str, send: Callable[[], None],
    sleep: Callable[[float], None],
) -> DatasetRef | None:
    """Run ``send`` under the create retry policy; return the version a failed attempt made, if any.

    Before each retry the version is looked up by ``marker`` in its notes,
    because a create that timed out on our side may still have gone through.
    """
    for attempt in retry.retrying("create", what=f"{call} {ref.id}", sleep=sleep):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                found = find_version_by_notes(api, ref, marker)
                if found is not None:
                    return ref.with_version(found.number)
            send()
    return None


def _created_version(api: KaggleApi, ref: DatasetRef, marker: str, before: DatasetVersion | None) -> DatasetRef:
    found = find_version_by_notes(api, ref, marker)
    if found is not None:
        log.info("created %s version %d", ref.id, found.number)
        return ref.with_version(found.number)
    # Kaggle may list the new version only a moment later; the number still follows the previous one.
    expected = (before.number if before else 0) + 1
    current = latest_version(api, ref)
    if current is not None and current.number >= expected:
        raise KaggleApiError(
            f"CreateDatasetVersion for {ref.id} succeeded but no version carries the notes marker {marker!r}",
            call="CreateDatasetVersion",
            resource=ref.id,
            hint="check the dataset's versions on Kaggle",
        )
    log.info("created %s version %d (not listed yet)", ref.id, expected)
    return ref.with_version(expected)
