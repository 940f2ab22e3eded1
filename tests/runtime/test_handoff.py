"""Tests of verify_handoff: the manifest identity decides, whatever the mount path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_relay.errors import ConfigError, HandoffMismatchError
from kaggle_relay.runtime.handoff import verify_handoff
from kaggle_relay.runtime.manifest import load_or_new

EXPECTED = {"dataset": "alice/relay-handoff", "version": 3, "run_id": "run-1"}


def publish(folder: Path, handoff: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = load_or_new(folder, run_id="run-1")
    manifest.handoff = handoff
    manifest.save()
    return folder


@pytest.mark.parametrize(
    "mount",
    [
        "relay-handoff",
        "d/alice/relay-handoff",
        "datasets/alice/relay-handoff",
        "datasets/alice/relay-handoff/checkpoints",
    ],
)
def test_handoff_found_in_every_layout(kaggle_root: Path, mount: str) -> None:
    folder = publish(kaggle_root / "input" / mount, EXPECTED)
    assert verify_handoff(EXPECTED) == folder


def test_handoff_same_slug_other_owner_is_skipped(kaggle_root: Path) -> None:
    publish(
        kaggle_root / "input" / "datasets" / "bob" / "relay-handoff",
        {**EXPECTED, "dataset": "bob/relay-handoff"},
    )
    ours = publish(kaggle_root / "input" / "datasets" / "alice" / "relay-handoff", EXPECTED)
    assert verify_handoff(EXPECTED) == ours


def test_handoff_reads_environment(kaggle_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = publish(kaggle_root / "input" / "relay-handoff", EXPECTED)
    monkeypatch.setenv("KAGGLE_RELAY_HANDOFF", json.dumps(EXPECTED))
    assert verify_handoff() == folder


def test_handoff_not_expected_returns_none(
    kaggle_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_RELAY_HANDOFF", raising=False)
    assert verify_handoff() is None


def test_handoff_wrong_version_lists_what_was_seen(kaggle_root: Path) -> None:
    publish(kaggle_root / "input" / "relay-handoff", {**EXPECTED, "version": 2})
    publish(kaggle_root / "input" / "other-data", None)
    with pytest.raises(HandoffMismatchError) as caught:
        verify_handoff(EXPECTED)
    message = str(caught.value)
    assert "'version': 2" in message
    assert "other-data" in message
    assert len(caught.value.found) == 2


def test_handoff_nothing_mounted_says_so(kaggle_root: Path) -> None:
    with pytest.raises(HandoffMismatchError, match="no relay manifest"):
        verify_handoff(EXPECTED)


def test_handoff_ignores_working_manifest(kaggle_root: Path) -> None:
    publish(kaggle_root / "working" / "checkpoints", EXPECTED)
    with pytest.raises(HandoffMismatchError):
        verify_handoff(EXPECTED)


def test_handoff_rejects_incomplete_identity(kaggle_root: Path) -> None:
    with pytest.raises(ConfigError, match="run_id"):
        verify_handoff({"dataset": "alice/x", "version": 1})


@pytest.mark.parametrize(
    "mount",
    [
        "relay-handoff/relay-handoff",
        "d/alice/relay-handoff/a/b/c/d/e/f",
        "datasets/alice/relay-handoff/runs/run-1/checkpoints",
        "notebooks/alice/relay-trainer/checkpoints",
        "relay-trainer/checkpoints",
    ],
)
def test_handoff_found_at_other_depths(kaggle_root: Path, mount: str) -> None:
    folder = publish(kaggle_root / "input" / mount, EXPECTED)
    assert verify_handoff(EXPECTED) == folder


def test_handoff_below_depth_bound_is_not_found(kaggle_root: Path) -> None:
    publish(kaggle_root / "input" / "datasets" / "alice" / "relay-handoff" / "a/b/c/d/e/f/g", EXPECTED)
    with pytest.raises(HandoffMismatchError) as caught:
        verify_handoff(EXPECTED)
    message = str(caught.value)
    assert "no relay manifest under the input folder" in message
    assert str(kaggle_root / "input" / "datasets" / "alice" / "relay-handoff") in message


def test_handoff_same_slug_flat_and_nested_picks_identity(kaggle_root: Path) -> None:
    publish(kaggle_root / "input" / "relay-handoff", {**EXPECTED, "dataset": "bob/relay-handoff"})
    publish(kaggle_root / "input" / "d" / "carol" / "relay-handoff", {**EXPECTED, "run_id": "run-0"})
    ours = publish(kaggle_root / "input" / "d" / "alice" / "relay-handoff", EXPECTED)
    assert verify_handoff(EXPECTED) == ours


def test_handoff_symlink_loop_in_input_ends(kaggle_root: Path) -> None:
    dataset = publish(kaggle_root / "input" / "relay-handoff" / "deep", {**EXPECTED, "version": 1})
    (dataset / "loop").symlink_to(dataset.parent)
    with pytest.raises(HandoffMismatchError) as caught:
        verify_handoff(EXPECTED)
    assert "'version': 1" in str(caught.value)


def test_handoff_unreadable_manifest_is_listed(kaggle_root: Path) -> None:
    folder = kaggle_root / "input" / "relay-handoff"
    folder.mkdir(parents=True)
    (folder / "relay-manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HandoffMismatchError) as caught:
        verify_handoff(EXPECTED)
    message = str(caught.value)
    assert str(folder / "relay-manifest.json") in message
    assert "no relay manifest under the input folder" not in message
