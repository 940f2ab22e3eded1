"""validate_checkpoint on real checkpoints: the validity rules, facts and reasons."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kaggle_relay.runtime import validate_checkpoint
from kaggle_relay.runtime.trust import TrustPolicy
from tests.runtime.builders import (
    CommandPayload,
    cut,
    record,
    save,
    save_safetensors,
    save_with_main_class,
    tiny_state,
    trainer_folder,
    training_checkpoint,
)


def test_valid_training_checkpoint_facts(tmp_path: Path) -> None:
    path = training_checkpoint(tmp_path / "ckpt.pt", step=200, epoch=2, val_loss=0.31)
    candidate = validate_checkpoint(path, require_keys=("model.weight", "optimizer"), metric="val_loss")
    assert candidate.valid, candidate.reason
    assert candidate.format == "torch-zip"
    assert candidate.step == 200
    assert candidate.step_from == "checkpoint"
    assert candidate.epoch == 2
    assert candidate.metrics == {"val_loss": 0.31}
    assert candidate.keys == ["model", "optimizer", "epoch", "step", "metrics"]
    assert candidate.manifest == "no entry"
    assert json.loads(json.dumps(candidate.to_dict()))["path"] == str(path)


def test_killed_save_reports_truncated_and_empty(tmp_path: Path) -> None:
    training_checkpoint(tmp_path / "ckpt-step10.pt", step=10)
    cut(training_checkpoint(tmp_path / "ckpt-step20.pt", step=20), 0.5)
    (tmp_path / "ckpt-step30.pt").touch()
    assert validate_checkpoint(tmp_path / "ckpt-step10.pt").valid
    half = validate_checkpoint(tmp_path / "ckpt-step20.pt")
    assert not half.valid
    assert half.reason.startswith("truncated")
    assert half.step == 20
    empty = validate_checkpoint(tmp_path / "ckpt-step30.pt")
    assert empty.reason.startswith("empty")
    assert empty.step == 30


def test_code_running_pickle_is_rejected_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = save(tmp_path / "evil.pt", {"model": tiny_state(), "extra": CommandPayload(marker)})

    for level in ("weights_only", "globals", "full"):
        policy = TrustPolicy(sources={"working": level}, globals=["posix.system"])
        candidate = validate_checkpoint(path, trust=policy)
        assert not candidate.valid
        assert "posix.system" in candidate.reason
        assert "run commands or code" in candidate.reason
    assert not marker.exists()

    # The payload is real: an unrestricted load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    path = save(tmp_path / "w.pt", {"model": tiny_state()})
    candidate = validate_checkpoint(path, require_keys=("model", "optimizer", "model.bias", "model.head.weight"))
    assert not candidate.valid
    assert candidate.reason == "missing required keys: optimizer, model.head.weight"


def test_nan_metric_is_invalid(tmp_path: Path) -> None:
    path = training_checkpoint(tmp_path / "c.pt", step=1, val_loss=math.nan)
    candidate = validate_checkpoint(path, metric="val_loss")
    assert not candidate.valid
    assert "metric 'val_loss' is nan" in candidate.reason
    assert candidate.to_dict()["metrics"] == {"val_loss": "nan"}
    assert not validate_checkpoint(path, metric="accuracy").valid


def test_manifest_match_and_mismatch(tmp_path: Path) -> None:
    path = training_checkpoint(tmp_path / "a.pt", step=5)
    record(tmp_path, "a.pt", **{"a.pt": {"step": 500, "epoch": 9, "metrics": {"acc": 0.9}}})
    candidate = validate_checkpoint(path)
    assert candidate.valid, candidate.reason
    assert candidate.manifest == "matched"
    assert (candidate.step, candidate.step_from, candidate.epoch) == (500, "manifest", 9)
    assert candidate.metrics == {"acc": 0.9}
    assert candidate.run_id == "run-1"

    training_checkpoint(path, step=6)
    changed = validate_checkpoint(path)
    assert not changed.valid
    assert changed.manifest == "mismatch"


def test_manifest_gives_full_size_of_cut_file(tmp_path: Path) -> None:
    path = training_checkpoint(tmp_path / "a.pt", step=5)
    full = path.stat().st_size
    record(tmp_path, "a.pt")
    cut(path, 0.5)
    assert validate_checkpoint(path).reason.startswith(f"truncated ({full // 2} of {full} bytes)")


def test_step_and_epoch_from_file_name(tmp_path: Path) -> None:
    for name, step, epoch in (("step_100.pt", 100, None), ("ckpt-step000200.pt", 200, None), ("epoch=3.ckpt", None, 3)):
        candidate = validate_checkpoint(save(tmp_path / name, tiny_state()))
        assert (candidate.step, candidate.epoch) == (step, epoch), name


def test_numpy_state_needs_trusted_globals(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    obj = {"model": tiny_state(), "rng": {"numpy": numpy.random.get_state()}, "best": numpy.float64(0.5)}
    path = save(tmp_path / "np.pt", obj)
    candidate = validate_checkpoint(path)
    assert not candidate.valid
    assert candidate.reason.startswith("structurally sound but needs trusted globals: ")
    assert "numpy.ndarray (importable)" in candidate.reason
    assert "TrustPolicy(sources={'working': 'globals'}" in candidate.reason

    trusted = TrustPolicy(sources={"working": "globals"}, globals=candidate.blocked_globals)
    assert validate_checkpoint(path, trust=trusted).valid


def test_main_class_and_loss_module_are_named(tmp_path: Path) -> None:
    main_path = save_with_main_class(tmp_path / "main.pt")
    candidate = validate_checkpoint(main_path)
    assert "__main__.TrainConfig (not importable" in candidate.reason

    loss_path = save(tmp_path / "loss.pt", {"model": tiny_state(), "hparams": {"loss": torch.nn.CrossEntropyLoss()}})
    candidate = validate_checkpoint(loss_path)
    assert "torch.nn.modules.loss.CrossEntropyLoss (importable)" in candidate.reason


def test_input_dataset_stays_weights_only(tmp_path: Path) -> None:
    path = save(tmp_path / "loss.pt", {"model": tiny_state(), "hparams": {"loss": torch.nn.CrossEntropyLoss()}})
    every_input = TrustPolicy(sources={"input_dataset": "full", "working": "full"})
    assert validate_checkpoint(path, trust=every_input).valid
    assert not validate_checkpoint(path, source="input_dataset", dataset="bob/ckpts", trust=every_input).valid
    named = TrustPolicy(datasets={"bob/ckpts": "full"})
    assert validate_checkpoint(path, source="input_dataset", dataset="bob/ckpts", trust=named).valid
    assert not validate_checkpoint(path, source="input_dataset", dataset="eve/ckpts", trust=named).valid


def test_wrapper_prefix_reported_and_keys_match(tmp_path: Path) -> None:
    state = {f"module._orig_mod.{key}": value for key, value in tiny_state().items()}
    path = save(tmp_path / "ddp.pt", {"model": state})
    candidate = validate_checkpoint(path, require_keys=("model.weight",))
    assert candidate.valid, candidate.reason
    assert candidate.key_prefix == "module._orig_mod."


def test_mixed_prefix_is_a_mismatch(tmp_path: Path) -> None:
    path = save(tmp_path / "mixed.pt", {"module.fc.weight": torch.ones(1), "head.bias": torch.ones(1)})
    candidate = validate_checkpoint(path)
    assert candidate.key_prefix.startswith("mismatch")


def test_legacy_file_is_valid_and_says_so(tmp_path: Path) -> None:
    candidate = validate_checkpoint(save(tmp_path / "old.pth", {"model": tiny_state(), "epoch": 4}, legacy=True))
    assert candidate.valid, candidate.reason
    assert candidate.format == "torch-legacy"
    assert candidate.epoch == 4
    assert any("legacy" in note for note in candidate.notes)


def test_safetensors_metadata_gives_step(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", tiny_state(), {"step": "40", "val_loss": "0.2"})
    candidate = validate_checkpoint(path, require_keys=("weight",), metric="val_loss")
    assert candidate.valid, candidate.reason
    assert candidate.step == 40
    assert candidate.metrics == {"val_loss": 0.2}


def test_trainer_folder_partial_and_complete(tmp_path: Path) -> None:
    good = validate_checkpoint(trainer_folder(tmp_path / "checkpoint-100", step=100), require_keys=("model.weight",))
    assert good.valid, good.reason
    assert good.format == "directory"
    assert good.step == 100
    assert good.metrics["eval_loss"] == 0.5

    partial = trainer_folder(tmp_path / "checkpoint-200", step=200, parts=("weights",))
    cut(partial / "model.safetensors", 0.5)
    bad = validate_checkpoint(partial)
    assert not bad.valid
    assert bad.reason.startswith("partial: ")
    assert bad.step == 200


def test_unknown_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint", encoding="utf-8")
    candidate = validate_checkpoint(path)
    assert not candidate.valid
    assert candidate.format == "unknown"
    assert candidate.reason.startswith("unknown format")


def test_trusted_main_class_missing_here_is_invalid(tmp_path: Path) -> None:
    path = save_with_main_class(tmp_path / "main.pt")
    for level in ("globals", "full"):
        trusted = TrustPolicy(sources={"working": level}, globals=["__main__.TrainConfig"])
        candidate = validate_checkpoint(path, trust=trusted)
        assert not candidate.valid, level
        assert candidate.reason.startswith("trusted globals cannot be imported in this process: __main__.TrainConfig")
        assert "define or import it before loading" in candidate.reason


TRAINING_SCRIPT_WITH_CLASS = """
import sys
from kaggle_relay.runtime import validate_checkpoint
from kaggle_relay.runtime.load import load_checkpoint
from kaggle_relay.runtime.trust import TrustPolicy

class TrainConfig:
    def __init__(self): self.lr = 0.1

trusted = TrustPolicy(sources={"working": "full"})
candidate = validate_checkpoint(sys.argv[1], trust=trusted)
assert candidate.valid, candidate.reason
print(load_checkpoint(candidate, trust=trusted)["config"].lr)
"""


def test_trusted_main_class_defined_by_resuming_script_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = save_with_main_class(tmp_path / "main.pt")
    result = subprocess.run(
        [sys.executable, "-c", TRAINING_SCRIPT_WITH_CLASS, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0.1"
