"""Datasets: metadata rules without a server, then create, version, wait and list
through the real kaggle client against the emulator."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.errors import (
    ConfigError,
    DatasetProcessingError,
    DatasetVersionFailedError,
    WaitTimeoutError,
)
from kaggle_relay.relay import client, datasets, retry
from kaggle_relay.relay.datasets import DatasetStatus
from kaggle_relay.relay.refs import DatasetRef
from kaggle_relay.relay.retry import RetryPolicy
from tests.relay import emulated
from tests.relay.emulated import USER

relay_api = emulated.relay_api
REF = DatasetRef(USER, "relay-handoff")


def valid_meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"id": f"{USER}/relay-handoff", "title": "Relay Handoff", "licenses": [{"name": "CC0-1.0"}]}
    meta.update(changes)
    return meta


def files(root: Path, contents: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- metadata (no server) ----------------------------------------------------


def test_valid_metadata_passes() -> None:
    datasets.validate_dataset_metadata(valid_meta(subtitle="Checkpoints handed between sessions"), username=USER)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"id": f"{USER}/abcd"}, "id", "6 to 50"),
        ({"id": f"{USER}/Relay Handoff"}, "id", "lowercase"),
        ({"id": f"{USER}/RelayHandoff"}, "id", "lowercase"),
        ({"id": f"{USER}/INSERT_SLUG_HERE"}, "id", "placeholder"),
        ({"id": "someone-else/relay-handoff"}, "id", "authenticated user"),
        ({"title": "Abcd"}, "title", "6 to 50"),
        ({"title": "INSERT_TITLE_HERE"}, "title", "placeholder"),
        ({"subtitle": "Ten chars!"}, "subtitle", "20 to 80"),
        ({"licenses": [{"name": "CC0-1.0"}, {"name": "CC-BY-4.0"}]}, "licenses", "exactly one"),
        ({"licenses": []}, "licenses", "exactly one"),
    ],
)
def test_metadata_rule_is_named(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        datasets.validate_dataset_metadata(valid_meta(**changes), username=USER)
    assert caught.value.field == field
    assert words in str(caught.value)


@pytest.mark.parametrize("spelling", ["READY", "ready", "DatabundleVersionStatus.READY", "DATABUNDLE_VERSION_STATUS_READY"])
def test_dataset_status_parses_spellings(spelling: str) -> None:
    assert DatasetStatus.parse(spelling) is DatasetStatus.READY


def test_processing_states() -> None:
    assert DatasetStatus.BLOBS_RECEIVED.is_processing
    assert DatasetStatus.REPROCESSING.is_processing
    assert not DatasetStatus.READY.is_processing
    assert not DatasetStatus.FAILED.is_processing


def test_list_files_requires_a_version() -> None:
    with pytest.raises(ValueError, match="no version"):
        datasets.list_version_files(None, REF)  # type: ignore[arg-type]


# --- emulator -------------------------------------------------------------------------


def publish(api: Any, folder: Path, notes: str) -> DatasetRef:
    return datasets.publish_folder(
        api, REF, folder, title="Relay Handoff", notes=notes, waits=datasets.PublishWaits(timeout=30, interval=0.1)
    )


def test_missing_dataset_is_created(relay_api: Any, tmp_path: Path) -> None:
    assert not datasets.dataset_exists(relay_api, REF)
    created = publish(relay_api, files(tmp_path / "v1", {"a.bin": b"12345"}), "run-a")
    assert created.version == 1
    ready = datasets.wait_for_ready(relay_api, created, timeout=30, interval=0.1)
    assert ready.status is DatasetStatus.READY
    assert datasets.list_version_files(relay_api, created) == {"a.bin": 5}


def test_new_version_waits_for_previous_ready(relay_api: Any, tmp_path: Path) -> None:
    publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    # The emulator responds 403 to a version created while the previous one processes.
    second = publish(relay_api, files(tmp_path / "v2", {"b.bin": b"22"}), "run-b")
    assert second.version == 2
    assert datasets.find_version_by_notes(relay_api, REF, "run-b").number == 2  # type: ignore[union-attr]
    ready = datasets.wait_for_ready(relay_api, second, timeout=30, interval=0.1)
    assert ready.notes == "run-b"
    assert datasets.list_version_files(relay_api, second) == {"b.bin": 2}


def test_forbidden_while_processing_is_processing_error(relay_api: Any, tmp_path: Path) -> None:
    publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    folder = files(tmp_path / "v2", {"b.bin": b"2"})
    (folder / "dataset-metadata.json").write_text((tmp_path / "v1" / "dataset-metadata.json").read_text())
    with pytest.raises(DatasetProcessingError):
        client.call(
            "CreateDatasetVersion", relay_api.dataset_create_version, str(folder), "run-b",
            quiet=True, forbidden_means_processing=True,
        )


def test_republish_with_same_marker_creates_nothing(relay_api: Any, tmp_path: Path) -> None:
    first = publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    datasets.wait_for_ready(relay_api, first, timeout=30, interval=0.1)
    second = publish(relay_api, files(tmp_path / "again", {"a.bin": b"1"}), "run-a")
    assert second == first
    assert datasets.latest_version(relay_api, REF).number == 1  # type: ignore[union-attr]


def test_subfolders_are_kept(relay_api: Any, tmp_path: Path) -> None:
    folder = files(tmp_path / "v1", {"top.txt": b"t", "checkpoints/step_100/model.pt": b"model"})
    created = publish(relay_api, folder, "run-a")
    datasets.wait_for_ready(relay_api, created, timeout=30, interval=0.1)
    assert datasets.list_version_files(relay_api, created) == {"top.txt": 1, "checkpoints/step_100/model.pt": 5}


def test_listing_reads_every_page(relay_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "LIST_PAGE_SIZE", 2)
    folder = files(tmp_path / "v1", {f"f{index}.bin": b"x" * index for index in range(1, 6)})
    created = publish(relay_api, folder, "run-a")
    datasets.wait_for_ready(relay_api, created, timeout=30, interval=0.1)
    assert datasets.list_version_files(relay_api, created) == {f"f{index}.bin": index for index in range(1, 6)}


def test_failed_version_is_a_hard_error(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    emulator.faults.fail_next_dataset_version()
    created = publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    with pytest.raises(DatasetVersionFailedError) as caught:
        datasets.wait_for_ready(relay_api, created, timeout=30, interval=0.1)
    assert caught.value.dataset == REF.id
    assert caught.value.version == 1
    assert REF.id in str(caught.value)


def test_wait_for_ready_is_bounded(relay_api: Any, tmp_path: Path) -> None:
    created = publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    clock = FakeClock()
    with pytest.raises(WaitTimeoutError) as caught:
        datasets.wait_for_ready(relay_api, created.with_version(7), timeout=5, interval=1, sleep=clock.sleep, clock=clock)
    assert "relay-handoff/7" in str(caught.value)
    assert clock.now == 5


def test_create_version_survives_503(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    first = publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    datasets.wait_for_ready(relay_api, first, timeout=30, interval=0.1)
    emulator.faults.inject("CreateDatasetVersion", "503", times=2)
    second = publish(relay_api, files(tmp_path / "v2", {"b.bin": b"2"}), "run-b")
    assert second.version == 2
    assert emulator.faults.pending() == []


def test_retried_create_finds_version_before_another(
    relay_api: Any, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = publish(relay_api, files(tmp_path / "v1", {"a.bin": b"1"}), "run-a")
    datasets.wait_for_ready(relay_api, first, timeout=30, interval=0.1)
    # The create is served after the client gave up waiting; the retry must find it, not repeat it.
    slow_policy = RetryPolicy(max_attempts=3, initial_seconds=1.6, max_seconds=1.6, total_seconds=60)
    monkeypatch.setitem(retry.DEFAULT_POLICIES, "create", slow_policy)
    client.set_timeout(relay_api, 0.3)
    emulator.faults.inject("CreateDatasetVersion", "slow", seconds=0.6)
    with caplog.at_level(logging.WARNING):
        second = publish(relay_api, files(tmp_path / "v2", {"b.bin": b"2"}), "run-b")
    assert "timed out" in caplog.text
    assert second.version == 2
    assert datasets.latest_version(relay_api, REF).number == 2  # type: ignore[union-attr]
