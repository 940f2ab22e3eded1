"""Selection across a Kaggle-shaped tree: metric with direction, source order, newest, ties."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from kaggle_relay.errors import NoValidCheckpointError
from kaggle_relay.runtime import find_best_checkpoint, find_latest_checkpoint, scan
from kaggle_relay.runtime.diagnose import format_report
from kaggle_relay.runtime.trust import TrustPolicy
from tests.runtime.builders import (
    CommandPayload,
    cut,
    record,
    save,
    save_safetensors,
    tiny_state,
    trainer_folder,
    training_checkpoint,
)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_killed_save_selects_last_complete(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    training_checkpoint(folder / "ckpt-step10.pt", step=10)
    cut(training_checkpoint(folder / "ckpt-step20.pt", step=20), 0.5)
    (folder / "ckpt-step30.pt").touch()

    result = scan()
    assert result.selected is not None
    assert result.selected.step == 10
    reasons = {Path(c.path).name: c.reason for c in result.candidates}
    assert reasons["ckpt-step20.pt"].startswith("truncated")
    assert reasons["ckpt-step30.pt"].startswith("empty")
    assert find_latest_checkpoint(["ckpt-step*.pt"]).step == 10


def test_metric_needs_explicit_mode(kaggle_root: Path) -> None:
    training_checkpoint(kaggle_root / "working" / "a.pt", step=1, val_loss=0.5)
    with pytest.raises(ValueError, match="mode='min'"):
        scan(metric="val_loss")
    with pytest.raises(ValueError, match="needs a metric"):
        scan(mode="max")


def test_loss_with_min_and_accuracy_with_max(kaggle_root: Path) -> None:
    folder = kaggle_root / "working"
    for step, loss, acc in ((100, 0.50, 0.70), (200, 0.31, 0.90), (300, 0.35, 0.80)):
        training_checkpoint(folder / f"ckpt-step{step}.pt", step=step, val_loss=loss, acc=acc)
    training_checkpoint(folder / "ckpt-step400.pt", step=400)

    assert find_best_checkpoint(metric="val_loss", mode="min").step == 200
    assert find_best_checkpoint(metric="val_loss", mode="max").step == 100
    assert find_best_checkpoint(metric="acc", mode="max").step == 200
    result = scan(metric="val_loss", mode="min")
    no_metric = next(c for c in result.candidates if c.step == 400)
    assert not no_metric.valid
    assert no_metric.reason == "metric 'val_loss' missing"


def test_nan_metric_is_never_best(kaggle_root: Path) -> None:
    folder = kaggle_root / "working"
    training_checkpoint(folder / "a.pt", step=1, val_loss=math.nan)
    training_checkpoint(folder / "b.pt", step=2, val_loss=0.9)
    assert find_best_checkpoint(metric="val_loss", mode="min").path.endswith("b.pt")


def test_source_order_without_metric(kaggle_root: Path) -> None:
    save(kaggle_root / "input" / "notebooks" / "me" / "train" / "ckpt-step900.pt", {"model": tiny_state(), "step": 900})
    save(kaggle_root / "input" / "datasets" / "me" / "handoff" / "ckpt-step500.pt", {"model": tiny_state(), "step": 500})
    assert find_best_checkpoint().source == "input_dataset"
    save(kaggle_root / "working" / "ckpt-step5.pt", {"model": tiny_state(), "step": 5})
    assert find_best_checkpoint().source == "working"


def test_newest_by_manifest_step_not_mtime(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    save(folder / "b.pt", tiny_state(1))
    save(folder / "a.pt", tiny_state(2))  # written last, so the newest by file time
    record(folder, "a.pt", "b.pt", **{"a.pt": {"step": 100}, "b.pt": {"step": 200}})
    chosen = find_best_checkpoint()
    assert chosen.path.endswith("b.pt")
    assert chosen.manifest == "matched"


def test_ties_break_by_path(kaggle_root: Path) -> None:
    folder = kaggle_root / "working"
    for name in ("c.pt", "a.pt", "b.pt"):
        training_checkpoint(folder / name, step=7, val_loss=0.25)
    assert find_best_checkpoint().path.endswith("a.pt")
    assert find_best_checkpoint(metric="val_loss", mode="min").path.endswith("a.pt")


def test_no_valid_checkpoint_lists_rejections(kaggle_root: Path) -> None:
    (kaggle_root / "working" / "empty.pt").touch()
    cut(save(kaggle_root / "working" / "half.pt", tiny_state()), 0.5)
    with pytest.raises(NoValidCheckpointError) as caught:
        find_best_checkpoint()
    assert len(caught.value.rejected) == 2
    assert "empty.pt: empty" in str(caught.value)
    assert "half.pt: truncated" in str(caught.value)


def test_required_keys_filter_candidates(kaggle_root: Path) -> None:
    save(kaggle_root / "working" / "weights-step9.pt", tiny_state())
    training_checkpoint(kaggle_root / "working" / "full-step3.pt", step=3)
    chosen = find_best_checkpoint(require_keys=("model", "optimizer"))
    assert chosen.path.endswith("full-step3.pt")


def test_trainer_folders_resume_from_complete(kaggle_root: Path) -> None:
    out = kaggle_root / "working" / "out"
    trainer_folder(out / "checkpoint-100", step=100)
    partial = trainer_folder(out / "checkpoint-200", step=200, parts=("weights",))
    cut(partial / "model.safetensors", 0.5)
    result = scan()
    assert result.selected is not None
    assert result.selected.path.endswith("checkpoint-100")
    assert [c.path.endswith("checkpoint-200") for c in result.rejected] == [True]
    assert result.rejected[0].reason.startswith("partial: ")


def test_every_source_and_format_found(kaggle_root: Path) -> None:
    inputs = kaggle_root / "input"
    save(inputs / "flatdata" / "legacy.pth", tiny_state(), legacy=True)
    save_safetensors(inputs / "d" / "ann" / "weights" / "model.safetensors", tiny_state())
    notebook = inputs / "prev-run"
    save(notebook / "final.pt", tiny_state())
    (notebook / "__notebook__.ipynb").write_text("{}", encoding="utf-8")

    by_name = {Path(c.path).name: c for c in scan().candidates}
    assert by_name["legacy.pth"].format == "torch-legacy"
    assert by_name["legacy.pth"].source == "input_dataset"
    assert by_name["model.safetensors"].dataset == "ann/weights"
    assert by_name["final.pt"].source == "notebook_output"
    assert all(c.valid for c in by_name.values())


def test_code_payload_in_input_never_runs(kaggle_root: Path) -> None:
    marker = kaggle_root.parent / "payload-ran"
    save(kaggle_root / "input" / "evil" / "model.pt", {"model": tiny_state(), "x": CommandPayload(marker)})
    result = scan(trust=TrustPolicy(datasets={"evil": "full"}))
    assert result.selected is None
    assert "posix.system" in result.candidates[0].reason
    assert not marker.exists()


def test_trusted_output_selected_by_opt_in(kaggle_root: Path) -> None:
    numpy = pytest.importorskip("numpy")
    path = kaggle_root / "input" / "notebooks" / "me" / "train" / "ckpt.pt"
    save(path, {"model": tiny_state(), "rng": numpy.random.get_state()})
    assert scan().selected is None
    blocked = scan().candidates[0].blocked_globals
    policy = TrustPolicy(sources={"notebook_output": "globals"}, globals=blocked)
    assert scan(trust=policy).selected is not None


def test_scan_writes_nothing_under_input(kaggle_root: Path) -> None:
    folder = kaggle_root / "input" / "datasets" / "me" / "handoff"
    training_checkpoint(folder / "ckpt-step10.pt", step=10)
    cut(training_checkpoint(folder / "ckpt-step20.pt", step=20), 0.5)
    record(folder, "ckpt-step10.pt")
    before = _snapshot(kaggle_root / "input")
    scan()
    find_latest_checkpoint(["*.pt"])
    assert _snapshot(kaggle_root / "input") == before


def test_report_lists_every_candidate(kaggle_root: Path) -> None:
    training_checkpoint(kaggle_root / "working" / "ckpt-step10.pt", step=10, val_loss=0.4)
    (kaggle_root / "working" / "ckpt-step30.pt").touch()
    report = format_report(scan(metric="val_loss", mode="min"))
    lines = report.splitlines()
    assert lines[0].split()[:6] == ["STATUS", "SIZE", "EPOCH", "STEP", "VAL_LOSS", "SOURCE"]
    assert lines[1].startswith("*")
    assert "-> empty (0 bytes)" in report
    assert lines[-1].startswith("selected by best val_loss (min)")
    hidden = format_report(scan(metric="val_loss", mode="min"), show_invalid=False)
    assert "ckpt-step30.pt" not in hidden
    assert "1 invalid not shown" in hidden
