"""publish_checkpoints: real torch checkpoints, the runtime's validator, the real client, the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kaggle_relay.errors import (
    CheckpointInvalidError,
    ConfigError,
    DatasetVersionFailedError,
    NoValidCheckpointError,
)
from kaggle_relay.relay import datasets, publish
from kaggle_relay.relay.refs import DatasetRef
from kaggle_relay.runtime.manifest import MANIFEST_NAME, load_manifest
from kaggle_relay.runtime.save import save_checkpoint
from tests.relay import emulated
from tests.relay.emulated import USER

relay_api = emulated.relay_api
REF = DatasetRef(USER, "relay-handoff")


def checkpoints(folder: Path, *steps: int, run_id: str = "run-1") -> Path:
    for step in steps:
        state = {"model": {"weight": torch.full((2, 2), float(step))}, "epoch": step // 100, "step": step}
        save_checkpoint(state, f"ckpt-step{step:06d}.pt", folder=folder, epoch=step // 100, step=step,
                        metrics={"val_acc": step / 1000}, run_id=run_id)  # fmt: skip
    return folder


def published_manifest(emulator: Any, ref: DatasetRef) -> dict[str, Any]:
    path = Path(emulator.data_dir) / "datasets" / ref.id / f"v{ref.version}" / MANIFEST_NAME
    return json.loads(path.read_text(encoding="utf-8"))


def run_publish(api: Any, source: Path, run_id: str, **options: Any) -> publish.PublishResult:
    return publish.publish_checkpoints(api, source, REF, run_id=run_id, timeout=30, **options)


def test_publishes_only_checkpoint_and_manifest(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    source = tmp_path / "output"
    checkpoints(source / "checkpoints", 100, 200)
    (source / "notes.txt").write_text("not needed", encoding="utf-8")
    result = run_publish(relay_api, source, "run-1", handoff_note="day 1")

    assert result.dataset == REF.with_version(1)
    assert result.files == ["ckpt-step000200.pt", MANIFEST_NAME]
    assert result.checkpoint is not None and result.checkpoint.step == 200
    listed = datasets.list_version_files(relay_api, result.dataset)
    assert set(listed) == {"ckpt-step000200.pt", MANIFEST_NAME}
    assert listed["ckpt-step000200.pt"] == (source / "checkpoints" / "ckpt-step000200.pt").stat().st_size


def test_manifest_carries_handoff_identity(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 100)
    result = run_publish(relay_api, source, "run-1")
    manifest = published_manifest(emulator, result.dataset)
    assert manifest["handoff"] == {"dataset": REF.id, "version": 1, "run_id": "run-1"}
    assert [entry["file"] for entry in manifest["files"]] == ["ckpt-step000100.pt"]
    original = load_manifest(source)
    assert original is not None
    assert manifest["files"][0]["sha256"] == original.files[0].sha256


def test_second_day_becomes_version_two(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    run_publish(relay_api, checkpoints(tmp_path / "day1", 100), "run-1")
    second = run_publish(relay_api, checkpoints(tmp_path / "day2", 100, 200), "run-2", min_step=101)
    assert second.dataset.version == 2
    assert published_manifest(emulator, second.dataset)["handoff"]["version"] == 2


def test_rerun_reuses_the_published_version(relay_api: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 100)
    first = run_publish(relay_api, source, "run-1")
    again = run_publish(relay_api, source, "run-1")
    assert again.dataset == first.dataset
    assert again.reused
    assert datasets.latest_version(relay_api, REF).number == 1  # type: ignore[union-attr]


def test_truncated_newest_falls_back_to_older_valid(relay_api: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 300, 400)
    newest = source / "ckpt-step000400.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    result = run_publish(relay_api, source, "run-1")
    assert result.files == ["ckpt-step000300.pt", MANIFEST_NAME]


def test_older_than_last_handoff_is_refused(relay_api: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 100)
    with pytest.raises(NoValidCheckpointError, match="older than the last handoff"):
        run_publish(relay_api, source, "run-2", min_step=201)
    assert not datasets.dataset_exists(relay_api, REF)


def test_no_valid_checkpoint_says_why(relay_api: Any, tmp_path: Path) -> None:
    source = tmp_path / "output"
    source.mkdir()
    (source / "ckpt-step000100.pt").write_bytes(b"")
    with pytest.raises(NoValidCheckpointError, match="ckpt-step000100.pt"):
        run_publish(relay_api, source, "run-1")


def test_required_key_missing_is_refused(relay_api: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 100)
    with pytest.raises(NoValidCheckpointError, match="optimizer"):
        run_publish(relay_api, source, "run-1", require_keys=["optimizer"])


def test_carried_files_keep_their_folders(relay_api: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 100)
    (source / "tokenizer").mkdir()
    (source / "tokenizer" / "vocab.json").write_text('{"a": 1}', encoding="utf-8")
    (source / "config.json").write_text("{}", encoding="utf-8")
    result = run_publish(relay_api, source, "run-1", carry=["tokenizer/vocab.json", "config.json"])
    listed = datasets.list_version_files(relay_api, result.dataset)
    assert set(listed) == {"ckpt-step000100.pt", MANIFEST_NAME, "tokenizer/vocab.json", "config.json"}
    assert listed["tokenizer/vocab.json"] == 8


def test_missing_carried_file_refuses_publish(relay_api: Any, tmp_path: Path) -> None:
    source = checkpoints(tmp_path / "output", 100)
    with pytest.raises(ConfigError, match="tokenizer.json") as caught:
        run_publish(relay_api, source, "run-1", carry=["tokenizer.json"])
    assert caught.value.field == "carry"
    assert not datasets.dataset_exists(relay_api, REF)


def test_failed_version_names_the_dataset(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    emulator.faults.fail_next_dataset_version()
    with pytest.raises(DatasetVersionFailedError, match=REF.id):
        run_publish(relay_api, checkpoints(tmp_path / "output", 100), "run-1")


def test_listing_that_differs_is_refused(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    result = run_publish(relay_api, checkpoints(tmp_path / "output", 100), "run-1")
    staged = dict(result.sizes)
    staged["ckpt-step000100.pt"] += 1
    with pytest.raises(CheckpointInvalidError, match="bytes"):
        publish.check_listing(relay_api, result.dataset, staged)
    staged["missing.pt"] = 3
    with pytest.raises(CheckpointInvalidError, match="missing"):
        publish.check_listing(relay_api, result.dataset, {"missing.pt": 3})


def test_default_title_is_long_enough() -> None:
    assert publish.default_title(DatasetRef(USER, "relay-handoff")) == "Relay Handoff"
    assert len(publish.default_title(DatasetRef(USER, "abcdef"))) >= 6


def test_day_two_without_carried_file_keeps_version_one(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    day1 = checkpoints(tmp_path / "day1", 10)
    (day1 / "tokenizer.json").write_text('{"vocab": 1}', encoding="utf-8")
    first = run_publish(relay_api, day1, "run-1", carry=["tokenizer.json"])
    assert set(datasets.list_version_files(relay_api, first.dataset)) == {
        "ckpt-step000010.pt",
        "tokenizer.json",
        MANIFEST_NAME,
    }

    day2 = checkpoints(tmp_path / "day2", 20)
    with pytest.raises(ConfigError, match="a dataset version is a full snapshot") as caught:
        run_publish(relay_api, day2, "run-2", carry=["tokenizer.json"], min_step=11)

    assert caught.value.field == "carry"
    latest = datasets.latest_version(relay_api, REF)
    assert latest is not None
    assert latest.number == 1


@pytest.mark.parametrize("item", ["../outside.txt", "/etc/hostname", "sub/../../outside.txt"])
def test_carried_file_outside_source_is_refused(relay_api: Any, tmp_path: Path, item: str) -> None:
    (tmp_path / "outside.txt").write_text("secret", encoding="utf-8")
    source = checkpoints(tmp_path / "output", 100)
    with pytest.raises(ConfigError, match="must be a path relative to") as caught:
        run_publish(relay_api, source, "run-1", carry=[item])
    assert caught.value.field == "carry"
    assert not datasets.dataset_exists(relay_api, REF)


def test_staged_link_keeps_known_download_hash(tmp_path: Path) -> None:
    from kaggle_relay.runtime.validate import known_sha256, remember_sha256

    source = tmp_path / "outputs"
    save_checkpoint({"model": {"weight": torch.ones(4)}}, "ckpt-0001.pt", folder=source, step=1)
    checkpoint = source / "ckpt-0001.pt"
    digest = load_manifest(source).entry("ckpt-0001.pt").sha256  # type: ignore[union-attr]
    remember_sha256(checkpoint, digest)
    selected = publish.select_checkpoint(source)

    publish.stage_handoff(source, tmp_path / "stage", selected, carry=(), handoff={}, run_id="r1")

    # The hard link changed the file's ctime; the hash is recorded again, so the upload does not rehash it.
    assert known_sha256(tmp_path / "stage" / "ckpt-0001.pt") == digest
