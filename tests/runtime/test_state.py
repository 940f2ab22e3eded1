"""Tests of training-state capture and restore: exact resume, optimizer mismatch, scheduler policy."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest
import torch

from kaggle_relay.errors import ConfigError, StateMismatchError
from kaggle_relay.runtime.manifest import load_manifest
from kaggle_relay.runtime.save import save_checkpoint
from kaggle_relay.runtime.state import capture_training_state, restore_training_state


def two_layer_model() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def reload(state: dict, tmp_path: Path) -> dict:
    torch.save(state, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=True)


def test_captured_state_loads_weights_only(tmp_path: Path) -> None:
    model = two_layer_model()
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    train_step(model, optimizer)
    state = capture_training_state(
        model, optimizer, scheduler, epoch=1, step=1, extra={"best": 0.5}
    )
    loaded = reload(state, tmp_path)
    assert loaded["epoch"] == 1
    assert loaded["step"] == 1
    assert loaded["extra"] == {"best": 0.5}
    assert set(loaded["rng"]) >= {"python", "numpy", "torch"}


def test_restore_brings_back_rng_states(tmp_path: Path) -> None:
    model = two_layer_model()
    state = reload(capture_training_state(model, epoch=0, step=0), tmp_path)
    expected = (random.random(), numpy.random.rand(), torch.rand(1).item())
    restore_training_state(state, model)
    assert (random.random(), numpy.random.rand(), torch.rand(1).item()) == expected


# --- C10: an optimizer over fewer tensors ----------------------------------------------------


def saved_adam_state(tmp_path: Path) -> dict:
    torch.manual_seed(0)
    model = two_layer_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train_step(model, optimizer)
    return reload(capture_training_state(model, optimizer, epoch=0, step=1), tmp_path)


def frozen_first_layer() -> tuple[torch.nn.Sequential, torch.optim.Adam]:
    torch.manual_seed(1)
    model = two_layer_model()
    for param in model[0].parameters():
        param.requires_grad_(False)
    return model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)


def test_optimizer_mismatch_loads_nothing(kaggle_root: Path, tmp_path: Path) -> None:
    saved = saved_adam_state(tmp_path)
    model, optimizer = frozen_first_layer()
    weights_before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer_before = optimizer.state_dict()

    with pytest.raises(StateMismatchError) as caught:
        restore_training_state(saved, model, optimizer)

    assert "4 parameters saved, 2 configured" in str(caught.value)
    assert "optimizer_policy='weights_only'" in caught.value.hint
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights_before[key]), key
    assert optimizer.state_dict() == optimizer_before


def test_optimizer_mismatch_weights_only_resume_is_recorded(
    kaggle_root: Path, tmp_path: Path
) -> None:
    saved = saved_adam_state(tmp_path)
    model, optimizer = frozen_first_layer()

    report = restore_training_state(saved, model, optimizer, optimizer_policy="weights_only")

    assert report.weights_only
    assert "4 parameters saved, 2 configured" in report.optimizer_mismatch
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    assert optimizer.state_dict()["state"] == {}
    manifest = load_manifest(kaggle_root / "working" / "checkpoints")
    assert manifest is not None
    events = [event for event in manifest.events if event["kind"] == "weights-only-resume"]
    assert len(events) == 1
    assert "4 parameters saved" in events[0]["reason"]


def test_optimizer_of_other_class_loads_nothing(kaggle_root: Path, tmp_path: Path) -> None:
    saved = saved_adam_state(tmp_path)
    torch.manual_seed(1)
    model = two_layer_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weights_before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer_before = optimizer.state_dict()

    with pytest.raises(StateMismatchError) as caught:
        restore_training_state(saved, model, optimizer)

    assert "different optimizer classes" in str(caught.value)
    assert "momentum" in str(caught.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights_before[key]), key
    assert optimizer.state_dict() == optimizer_before

    report = restore_training_state(saved, model, optimizer, optimizer_policy="weights_only")
    assert report.weights_only
    train_step(model, optimizer)
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_optimizer_with_other_groups_loads_nothing(tmp_path: Path) -> None:
    saved = saved_adam_state(tmp_path)
    model = two_layer_model()
    params = list(model.parameters())
    optimizer = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    with pytest.raises(StateMismatchError, match="1 parameter groups saved, 2 configured"):
        restore_training_state(saved, model, optimizer)
    assert optimizer.state_dict()["state"] == {}


def test_adamw_resumes_from_adam_with_difference_listed(tmp_path: Path) -> None:
    saved = saved_adam_state(tmp_path)
    model = two_layer_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    report = restore_training_state(saved, model, optimizer, scheduler_policy="override")
    assert report.optimizer_mismatch == ""
    differences = {difference.name for difference in report.differences}
    assert "optimizer.param_groups[0].decoupled_weight_decay" in differences
    train_step(model, optimizer)


def test_optimizer_state_shape_mismatch_is_found(tmp_path: Path) -> None:
    saved = saved_adam_state(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    other = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Linear(2, 4))
    optimizer = torch.optim.Adam(other.parameters())
    with pytest.raises(StateMismatchError, match="has shape"):
        restore_training_state(saved, model, optimizer)


def test_model_mismatch_is_rejected_before_loading(tmp_path: Path) -> None:
    saved = saved_adam_state(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with pytest.raises(StateMismatchError, match="model state"):
        restore_training_state(saved, model, optimizer_policy="weights_only")


def test_restore_strips_wrapper_prefix(tmp_path: Path) -> None:
    source = two_layer_model()
    wrapped = torch.nn.Module()
    wrapped.module = source
    saved = reload(capture_training_state(wrapped, epoch=0, step=0), tmp_path)
    model = two_layer_model()

    with pytest.raises(StateMismatchError) as caught:
        restore_training_state(saved, model)
    assert "strip_prefix=True" in caught.value.hint

    report = restore_training_state(saved, model, strip_prefix=True)
    assert report.stripped_prefix == "module."
    assert torch.equal(model[0].weight, source[0].weight)


def test_restore_rejects_unknown_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scheduler_policy"):
        restore_training_state({}, two_layer_model(), scheduler_policy="newest")


# --- C11: the saved scheduler against new settings -------------------------------------------


def cosine_session_one(tmp_path: Path) -> dict:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    for _ in range(400):
        optimizer.step()
        scheduler.step()
    return reload(capture_training_state(model, optimizer, scheduler, epoch=0, step=400), tmp_path)


def cosine_session_two() -> tuple[
    torch.nn.Linear, torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR
]:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2000)


def cosine(base: float, t_max: int, step: int) -> float:
    return base * (1 + math.cos(math.pi * step / t_max)) / 2


SCHEDULER_POLICY_CASES = [
    # (policy, first lr after resume, lr after one more step)
    ("keep_saved", cosine(0.1, 1000, 400), cosine(0.1, 1000, 401)),
    ("override", cosine(0.01, 2000, 400), cosine(0.01, 2000, 401)),
    ("weights_only", 0.01, cosine(0.01, 2000, 1)),
]


@pytest.mark.parametrize(
    ("policy", "first_lr", "next_lr"),
    SCHEDULER_POLICY_CASES,
    ids=[c[0] for c in SCHEDULER_POLICY_CASES],
)
def test_scheduler_policy_sets_first_lr(
    tmp_path: Path, policy: str, first_lr: float, next_lr: float
) -> None:
    saved = cosine_session_one(tmp_path)
    model, optimizer, scheduler = cosine_session_two()

    report = restore_training_state(saved, model, optimizer, scheduler, scheduler_policy=policy)

    assert optimizer.param_groups[0]["lr"] == pytest.approx(first_lr, rel=1e-9)
    assert report.learning_rates == [pytest.approx(first_lr, rel=1e-9)]
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(next_lr, rel=1e-6)


def test_scheduler_differences_are_reported(tmp_path: Path) -> None:
    saved = cosine_session_one(tmp_path)
    model, optimizer, scheduler = cosine_session_two()

    report = restore_training_state(saved, model, optimizer, scheduler)

    differences = {
        difference.name: (difference.saved, difference.configured)
        for difference in report.differences
    }
    assert differences["scheduler.T_max"] == (1000, 2000)
    assert differences["scheduler.base_lrs"] == ([0.1], [0.01])
    assert differences["optimizer.param_groups[0].initial_lr"] == (0.1, 0.01)
    assert "scheduler.last_epoch" not in differences
    assert (
        "saved versus configured: scheduler.T_max: saved 1000, configured 2000" in report.summary()
    )


def test_scheduler_of_other_class_is_rejected_under_keep_saved(tmp_path: Path) -> None:
    saved = cosine_session_one(tmp_path)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    weights_before = {key: value.clone() for key, value in model.state_dict().items()}

    with pytest.raises(StateMismatchError) as caught:
        restore_training_state(saved, model, optimizer, scheduler)

    assert "settings T_max, eta_min" in str(caught.value)
    assert "StepLR with settings gamma, step_size" in str(caught.value)
    assert "scheduler_policy='override'" in caught.value.hint
    assert optimizer.param_groups[0]["lr"] == 0.01
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights_before[key]), key

    restore_training_state(saved, model, optimizer, scheduler, scheduler_policy="override")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**4, rel=1e-9)


NO_SAVED_SCHEDULER_CASES = [
    # (policy, first lr after resume): nothing saved records where the configured schedule would be.
    ("keep_saved", 0.1),
    ("override", 0.01),
    ("weights_only", 0.01),
]


@pytest.mark.parametrize(("policy", "first_lr"), NO_SAVED_SCHEDULER_CASES, ids=[c[0] for c in NO_SAVED_SCHEDULER_CASES])
def test_configured_scheduler_without_saved_one_follows_policy(tmp_path: Path, policy: str, first_lr: float) -> None:
    model = torch.nn.Linear(4, 2)
    saved = reload(
        capture_training_state(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, step=400),
        tmp_path,
    )
    model, optimizer, scheduler = cosine_session_two()

    report = restore_training_state(saved, model, optimizer, scheduler, scheduler_policy=policy)

    assert "scheduler (none saved)" in report.skipped
    assert optimizer.param_groups[0]["lr"] == pytest.approx(first_lr, rel=1e-9)
    if policy != "keep_saved":
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine(0.01, 2000, 1), rel=1e-6)


def test_optimizer_settings_follow_policy_without_scheduler(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    saved = reload(
        capture_training_state(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, step=1),
        tmp_path,
    )

    kept_optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    restore_training_state(saved, model, kept_optimizer)
    assert kept_optimizer.param_groups[0]["lr"] == 0.1

    new_optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    restore_training_state(saved, model, new_optimizer, scheduler_policy="override")
    assert new_optimizer.param_groups[0]["lr"] == 0.5


# --- exact resume in a new process ----------------------------------------------------------

RESUME_SCRIPT = textwrap.dedent(
    """
    import json, random, sys
    import numpy, torch
    from kaggle_relay.runtime.load import load_checkpoint
    from kaggle_relay.runtime.save import save_checkpoint
    from kaggle_relay.runtime.state import capture_training_state, restore_training_state

    mode, folder, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    seed = 0 if mode != "resume" else 12345  # a resumed process must not depend on its own seed
    random.seed(seed); numpy.random.seed(seed); torch.manual_seed(seed)

    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
    if mode == "resume":
        restore_training_state(load_checkpoint(folder + "/state.pt"), model, optimizer, scheduler)

    for step in range(first, last):
        batch = torch.randn(16, 6) * (1 + random.random()) + float(numpy.random.rand())
        loss = model(batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()

    if mode == "first":
        state = capture_training_state(model, optimizer, scheduler, epoch=0, step=last)
        save_checkpoint(state, "state.pt", folder=folder, step=last)
    weights = [value.flatten().tolist() for value in model.state_dict().values()]
    print(json.dumps({"weights": weights, "lr": optimizer.param_groups[0]["lr"]}))
    """
)


def run_training(mode: str, folder: Path, first: int, last: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, mode, str(folder), str(first), str(last)],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_resume_in_new_process_matches_uninterrupted_run(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    uninterrupted = run_training("uninterrupted", folder, 0, 20)
    run_training("first", folder, 0, 10)
    resumed = run_training("resume", folder, 10, 20)
    assert resumed["lr"] == uninterrupted["lr"]
    assert resumed["weights"] == uninterrupted["weights"]


def test_saved_training_state_records_step(kaggle_root: Path) -> None:
    model = two_layer_model()
    entry = save_checkpoint(
        capture_training_state(model, epoch=2, step=30), "state.pt", epoch=2, step=30
    )
    assert entry.step == 30
    loaded = torch.load(kaggle_root / "working" / "checkpoints" / "state.pt", weights_only=True)
    assert loaded["step"] == 30
