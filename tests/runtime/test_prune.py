"""Tests of checkpoint retention: policies decide, one function deletes, the manifest records why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import ConfigError, ReadOnlyLocationError
from kaggle_relay.runtime.manifest import ManifestEntry, load_manifest, load_or_new, sha256_file
from kaggle_relay.runtime.prune import (
    KeepBest,
    KeepNewest,
    KeepNewestValid,
    RetentionItem,
    plan_retention,
    plan_space_release,
    protection_policies,
    prune_checkpoints,
    resolve_mode,
    retention_policies,
)


def items_from(table: list[tuple[int, dict[str, float]]]) -> list[RetentionItem]:
    return [
        RetentionItem(file=f"ckpt-{step}.pt", bytes=100, step=step, metrics=metrics)
        for step, metrics in table
    ]


def kept_steps(
    items: list[RetentionItem], keep: int, metric: str | None, mode: str | None
) -> set[int]:
    decisions = plan_retention(items, retention_policies(keep, metric, mode))
    return {
        int(decision.file.split("-")[1].removesuffix(".pt"))
        for decision in decisions
        if decision.keep
    }


LOSSES = [(100, 0.50), (200, 0.31), (300, 0.35), (400, 0.40), (500, 0.45)]
ACCURACIES = [(100, 0.60), (200, 0.91), (300, 0.85), (400, 0.80), (500, 0.75)]

RETENTION_CASES = [
    # (case, table, keep, metric, mode, kept steps)
    (
        "loss min keeps best",
        [(s, {"val_loss": v}) for s, v in LOSSES],
        2,
        "val_loss",
        "min",
        {200, 400, 500},
    ),
    (
        "newest without metric never best",
        [(s, {"val_loss": v}) for s, v in LOSSES] + [(600, {})],
        2,
        "val_loss",
        "min",
        {200, 500, 600},
    ),
    (
        "accuracy max keeps argmax",
        [(s, {"accuracy": v}) for s, v in ACCURACIES] + [(600, {})],
        2,
        "accuracy",
        "max",
        {200, 500, 600},
    ),
    (
        "best already newest",
        [(100, {"loss": 0.9}), (200, {"loss": 0.8}), (300, {"loss": 0.1})],
        1,
        "loss",
        "min",
        {300},
    ),
    ("no metric keeps newest", [(100, {}), (200, {}), (300, {})], 2, None, None, {200, 300}),
    (
        "nan never best",
        [(100, {"loss": 0.5}), (200, {"loss": float("nan")}), (300, {})],
        1,
        "loss",
        "min",
        {100, 300},
    ),
    (
        "tie goes to newest",
        [(100, {"loss": 0.2}), (200, {"loss": 0.2}), (300, {"loss": 0.4})],
        1,
        "loss",
        "min",
        {200, 300},
    ),
]


@pytest.mark.parametrize(
    ("table", "keep", "metric", "mode", "expected"),
    [case[1:] for case in RETENTION_CASES],
    ids=[case[0] for case in RETENTION_CASES],
)
def test_retention_keeps_expected_steps(
    table: list[tuple[int, dict[str, float]]],
    keep: int,
    metric: str | None,
    mode: str | None,
    expected: set[int],
) -> None:
    assert kept_steps(items_from(table), keep, metric, mode) == expected


def test_retention_orders_by_step_not_listing_order() -> None:
    items = items_from([(300, {}), (100, {}), (200, {})])
    assert kept_steps(items, 1, None, None) == {300}


def test_retention_never_counts_invalid_files() -> None:
    items = items_from([(10, {}), (20, {}), (30, {})])
    items[1].valid, items[1].problem = False, "size 50 bytes, manifest says 100"
    items[2].valid, items[2].problem = False, "size 0 bytes, manifest says 100"
    decisions = {
        decision.file: decision for decision in plan_retention(items, retention_policies(1))
    }
    assert decisions["ckpt-10.pt"].keep
    assert "newest valid" in decisions["ckpt-10.pt"].reason
    assert decisions["ckpt-20.pt"].keep
    assert decisions["ckpt-20.pt"].reason.startswith("invalid (size 50 bytes")
    assert decisions["ckpt-30.pt"].keep


def test_retention_delete_reason_names_rules() -> None:
    items = items_from([(s, {"val_loss": v}) for s, v in LOSSES])
    decisions = {
        decision.file: decision
        for decision in plan_retention(items, retention_policies(2, "val_loss", "min"))
    }
    assert not decisions["ckpt-100.pt"].keep
    assert "keep newest 2" in decisions["ckpt-100.pt"].reason
    assert "keep best by val_loss (min)" in decisions["ckpt-100.pt"].reason
    assert decisions["ckpt-200.pt"].kept_by == ("keep best by val_loss (min)",)


def test_resolve_mode_takes_the_given_direction() -> None:
    assert resolve_mode("bleu", "min") == "min"
    assert resolve_mode("val_loss", "max") == "max"


@pytest.mark.parametrize(("metric", "mode"), [("val_loss", None), ("accuracy", None), ("loss", "down")])
def test_resolve_mode_never_guesses_direction(metric: str, mode: str | None) -> None:
    with pytest.raises(ConfigError, match="needs a direction"):
        resolve_mode(metric, mode)


def test_policies_describe_their_rule() -> None:
    assert KeepNewest(3).describe() == "keep newest 3"
    assert KeepBest("loss", "min").describe() == "keep best by loss (min)"
    assert KeepNewestValid().describe() == "keep newest valid"


def test_space_release_takes_oldest_unprotected_first() -> None:
    items = items_from([(s, {"val_loss": v}) for s, v in LOSSES])
    chosen = plan_space_release(items, 150, protection_policies("val_loss", "min"))
    assert [decision.file for decision in chosen] == ["ckpt-100.pt", "ckpt-300.pt"]


def test_space_release_empty_when_not_enough() -> None:
    items = items_from([(s, {"val_loss": v}) for s, v in LOSSES])
    assert plan_space_release(items, 301, protection_policies("val_loss", "min")) == []


# --- on disk ---------------------------------------------------------------------------------


def write_run(folder: Path, table: list[tuple[int, dict[str, float]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = load_or_new(folder, run_id="run-1")
    for index, (step, metrics) in enumerate(table):
        name = f"ckpt-{step}.pt"
        torch.save({"model": {"w": torch.full((4,), float(step))}, "step": step}, folder / name)
        manifest.upsert(
            ManifestEntry(
                file=name,
                bytes=(folder / name).stat().st_size,
                sha256=sha256_file(folder / name),
                format="torch-zip",
                step=step,
                metrics=metrics,
                created=f"2026-01-01T00:00:{index:02d}.000Z",
                run_id="run-1",
            )
        )
    manifest.save()


def test_prune_deletes_files_and_records_events(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    write_run(folder, [(s, {"val_loss": v}) for s, v in LOSSES] + [(600, {})])

    prune_checkpoints(folder, keep=2, metric="val_loss", mode="min")

    assert sorted(path.name for path in folder.glob("ckpt-*.pt")) == [
        "ckpt-200.pt",
        "ckpt-500.pt",
        "ckpt-600.pt",
    ]
    manifest = load_manifest(folder)
    assert manifest is not None
    assert [entry.step for entry in manifest.files] == [200, 500, 600]
    pruned = [event["file"] for event in manifest.events if event["kind"] == "prune"]
    assert pruned == ["ckpt-100.pt", "ckpt-300.pt", "ckpt-400.pt"]
    retained = [event for event in manifest.events if event["kind"] == "retain"]
    assert [event["file"] for event in retained] == ["ckpt-200.pt"]
    assert "best val_loss = 0.31" in retained[0]["reason"]


def test_prune_ignores_file_times(kaggle_root: Path) -> None:
    import os

    folder = kaggle_root / "working" / "checkpoints"
    write_run(folder, [(100, {}), (200, {}), (300, {})])
    # Make the oldest step look like the newest file, as a copy would.
    os.utime(folder / "ckpt-100.pt", (4_000_000_000, 4_000_000_000))
    prune_checkpoints(folder, keep=1)
    assert sorted(path.name for path in folder.glob("ckpt-*.pt")) == ["ckpt-300.pt"]


def test_prune_keeps_valid_when_newer_files_are_corrupt(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    write_run(folder, [(10, {}), (20, {}), (30, {})])
    data = (folder / "ckpt-20.pt").read_bytes()
    (folder / "ckpt-20.pt").write_bytes(data[: len(data) // 2])
    (folder / "ckpt-30.pt").write_bytes(b"")

    decisions = prune_checkpoints(folder, keep=1)

    assert all(decision.keep for decision in decisions)
    assert (folder / "ckpt-10.pt").stat().st_size > 0
    assert (folder / "ckpt-20.pt").exists()


def test_prune_hash_check_finds_same_size_corruption(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    write_run(folder, [(10, {}), (20, {})])
    data = bytearray((folder / "ckpt-20.pt").read_bytes())
    data[-30] ^= 0xFF
    (folder / "ckpt-20.pt").write_bytes(bytes(data))

    prune_checkpoints(folder, keep=1, verify_hash=True)

    assert (folder / "ckpt-10.pt").exists()


def test_prune_dry_run_deletes_nothing(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    write_run(folder, [(100, {}), (200, {}), (300, {})])
    before = (folder / "relay-manifest.json").read_bytes()
    decisions = prune_checkpoints(folder, keep=1, dry_run=True)
    assert [decision.keep for decision in decisions] == [False, False, True]
    assert len(list(folder.glob("ckpt-*.pt"))) == 3
    assert (folder / "relay-manifest.json").read_bytes() == before


def test_prune_pattern_limits_files(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    write_run(folder, [(100, {}), (200, {}), (300, {})])
    prune_checkpoints(folder, keep=1, pattern="ckpt-[12]00.pt")
    assert sorted(path.name for path in folder.glob("ckpt-*.pt")) == ["ckpt-200.pt", "ckpt-300.pt"]


def test_prune_rejects_input_folder(kaggle_root: Path) -> None:
    folder = kaggle_root / "input" / "old-run"
    write_run(folder, [(100, {}), (200, {})])
    with pytest.raises(ReadOnlyLocationError):
        prune_checkpoints(folder, keep=1)
    assert len(list(folder.glob("ckpt-*.pt"))) == 2


def test_prune_rejects_folder_outside_working(kaggle_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    write_run(folder, [(100, {}), (200, {})])
    with pytest.raises(ReadOnlyLocationError, match="outside"):
        prune_checkpoints(folder, keep=1)
    assert len(list(folder.glob("ckpt-*.pt"))) == 2


def test_prune_rejects_keep_zero(kaggle_root: Path) -> None:
    with pytest.raises(ConfigError, match="keep=0"):
        prune_checkpoints(kaggle_root / "working" / "checkpoints", keep=0)
