"""Capture and restore the full training state for an exact resume in a new session.

``capture_training_state`` returns a dict that ``save_checkpoint`` writes as
is and that loads with ``weights_only=True``: model, optimizer and scheduler
state dicts, epoch and step, and the Python, NumPy (when installed) and torch
(CPU and CUDA) random number generator states, stored as tensors and lists.

``restore_training_state`` checks everything before it changes anything, so
a failed restore leaves model, optimizer and scheduler untouched:

- the model's keys and shapes must match (``strip_prefix`` removes a
  ``module.`` or ``_orig_mod.`` prefix carried by every saved key);
- the optimizer must have the same parameter groups, parameter counts and
  state shapes. On a mismatch, ``optimizer_policy="strict"`` raises
  StateMismatchError and ``"weights_only"`` resumes with a fresh optimizer
  (recorded as a manifest event);
- the saved and configured hyper-parameters (``initial_lr``, ``T_max``, ...)
  are compared and every difference is listed in the report.
  ``scheduler_policy`` decides which one wins:

  ``keep_saved``: the saved schedule continues where it stopped;
  ``override``: the configured schedule, advanced to the saved position;
  ``weights_only``: the configured schedule from its start.

  Without a scheduler, the same policy decides whether the saved or the
  configured optimizer settings (lr, momentum, ...) apply.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kaggle_relay.errors import ConfigError, StateMismatchError
from kaggle_relay.runtime import keys

log = logging.getLogger(__name__)

STATE_FORMAT = "kaggle-relay-training-state/1"
OPTIMIZER_POLICIES = ("strict", "weights_only")
SCHEDULER_POLICIES = ("keep_saved", "override", "weights_only")
# Scheduler state entries that record progress, not settings.
_SCHEDULER_COUNTERS = frozenset(
    {
        "last_epoch",
        "_step_count",
        "_last_lr",
        "_get_lr_called_within_step",
        "_is_initial",
        "verbose",
        "_initial_step",
    }
)


# --- capture ------------------------------------------------------------------------------


def _python_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def _numpy_rng() -> dict[str, Any] | None:
    try:
        import numpy
    except ImportError:
        return None
    state = numpy.random.get_state(legacy=False)
    return {
        "bit_generator": state["bit_generator"],
        "key": state["state"]["key"].tolist(),
        "pos": int(state["state"]["pos"]),
        "has_gauss": int(state["has_gauss"]),
        "gauss": float(state["gauss"]),
    }


def capture_rng() -> dict[str, Any]:
    """Return the Python, NumPy and torch RNG states as lists, numbers and tensors."""
    states: dict[str, Any] = {"python": _python_rng(), "torch": torch.get_rng_state()}
    numpy_state = _numpy_rng()
    if numpy_state is not None:
        states["numpy"] = numpy_state
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def capture_training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    epoch: int,
    step: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return everything an exact resume needs, ready for ``save_checkpoint``.

    ``extra`` is stored under ``"extra"``; it must hold only tensors, numbers,
    strings and containers of those, like the rest of the checkpoint.
    """
    return {
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": capture_rng(),
        "extra": dict(extra) if extra else {},
    }


# --- restore: the report ------------------------------------------------------------------


@dataclass
class Difference:
    """One hyper-parameter whose saved value differs from the configured one."""

    name: str
    saved: Any
    configured: Any

    def __str__(self) -> str:
        return f"{self.name}: saved {self.saved!r}, configured {self.configured!r}"


@dataclass
class ResumeReport:
    """The outcome of ``restore_training_state``: parts loaded and skipped, and settings that differ."""

    epoch: int | None = None
    step: int | None = None
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    optimizer_mismatch: str = ""
    scheduler_policy: str = ""
    learning_rates: list[float] = field(default_factory=list)
    stripped_prefix: str = ""

    @property
    def weights_only(self) -> bool:
        return "optimizer" in self.skipped

    def summary(self) -> str:
        lines = [
            f"resumed at epoch {self.epoch}, step {self.step}: loaded {', '.join(self.loaded) or 'nothing'}"
        ]
        if self.skipped:
            lines.append(f"not loaded: {', '.join(self.skipped)}")
        if self.optimizer_mismatch:
            lines.append(f"optimizer mismatch: {self.optimizer_mismatch}")
        lines.extend(f"saved versus configured: {difference}" for difference in self.differences)
        if self.differences:
            lines.append(f"scheduler policy {self.scheduler_policy!r} applied")
        lines.append(f"learning rates now: {self.learning_rates}")
        return "\n".join(lines)


# --- restore: checks ----------------------------------------------------------------------


def _model_state(saved: Mapping[str, Any], strip_prefix: bool) -> tuple[Mapping[str, Any], str]:
    if not strip_prefix:
        return saved, ""
    found = keys.detect_key_prefix(saved.keys())
    if found.mismatch or not found.prefix:
        return saved, ""
    return keys.strip_key_prefix(saved, found.prefix), found.prefix


def check_model_state(model: torch.nn.Module, saved: Mapping[str, Any]) -> None:
    """Raise StateMismatchError unless ``saved`` has exactly the model's keys and shapes."""
    current = model.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = [
        f"{key} {tuple(saved[key].shape)} vs {tuple(value.shape)}"
        for key, value in current.items()
        if key in saved and isinstance(saved[key], torch.Tensor) and saved[key].shape != value.shape
    ]
    if missing or unexpected or shapes:
        carried = keys.detect_key_prefix(saved.keys()).prefix
        fits = bool(carried) and {key[len(carried) :] for key in saved} == set(current)
        hint = (
            f"pass strip_prefix=True to remove {carried!r}"
            if fits
            else "check that the model matches the checkpoint"
        )
        raise StateMismatchError(
            "model state",
            {"unexpected keys": unexpected[:5], "shape (saved vs model)": shapes[:5]},
            {"missing keys": missing[:5]},
            hint=hint,
        )


# Group entries that are not optimizer settings: schedulers add initial_lr, named parameters param_names.
_GROUP_BOOKKEEPING = {"params", "initial_lr", "param_names"}


def describe_optimizer_mismatch(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> str:
    """Return why the saved optimizer state cannot load into ``optimizer``, or "" when it can."""
    saved_groups = saved.get("param_groups", [])
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        return f"{len(saved_groups)} parameter groups saved, {len(groups)} configured"
    for index, (saved_group, group) in enumerate(zip(saved_groups, groups, strict=True)):
        if len(saved_group["params"]) != len(group["params"]):
            return f"group {index}: {len(saved_group['params'])} parameters saved, {len(group['params'])} configured"
        # load_state_dict replaces each group with the saved one, so a different optimizer class
        # (Adam saved, SGD configured) would load and then fail on its first step. A torch upgrade
        # only adds settings, so settings missing on both sides mean another class.
        only_saved = sorted(set(saved_group) - set(group) - _GROUP_BOOKKEEPING)
        only_configured = sorted(set(group) - set(saved_group) - _GROUP_BOOKKEEPING)
        if only_saved and only_configured:
            return (
                f"group {index}: the saved optimizer has settings {', '.join(only_saved)} and the configured "
                f"one has {', '.join(only_configured)} instead, so they are different optimizer classes"
            )

    saved_ids = [pid for group in saved_groups for pid in group["params"]]
    params = [param for group in groups for param in group["params"]]
    by_id = dict(zip(saved_ids, params, strict=True))
    for pid, param_state in saved.get("state", {}).items():
        param = by_id.get(pid)
        if param is None:
            return f"saved state for parameter id {pid}, which no group lists"
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return f"state {name!r} of parameter {pid} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
    return ""


def _hyper_parameters(group: Mapping[str, Any], has_scheduler: bool) -> dict[str, Any]:
    # With a scheduler the current lr is a point on the schedule, so initial_lr is the setting to compare.
    skip = {"params", "lr"} if has_scheduler and "initial_lr" in group else {"params"}
    return {key: value for key, value in group.items() if key not in skip}


def compare_settings(
    saved_optimizer: Mapping[str, Any] | None,
    optimizer: torch.optim.Optimizer | None,
    saved_scheduler: Mapping[str, Any] | None,
    scheduler: Any,
) -> list[Difference]:
    """List the optimizer and scheduler settings whose saved and configured values differ."""
    differences: list[Difference] = []
    if saved_optimizer is not None and optimizer is not None:
        pairs = zip(saved_optimizer.get("param_groups", []), optimizer.param_groups, strict=False)
        for index, (saved_group, group) in enumerate(pairs):
            saved_values = _hyper_parameters(saved_group, scheduler is not None)
            configured = _hyper_parameters(group, scheduler is not None)
            for key in sorted(set(saved_values) | set(configured)):
                if saved_values.get(key) != configured.get(key):
                    differences.append(
                        Difference(
                            f"optimizer.param_groups[{index}].{key}",
                            saved_values.get(key),
                            configured.get(key),
                        )
                    )
    if saved_scheduler is not None and scheduler is not None:
        current = scheduler.state_dict()
        for key in sorted((set(saved_scheduler) | set(current)) - _SCHEDULER_COUNTERS):
            if saved_scheduler.get(key) != current.get(key):
                differences.append(
                    Difference(f"scheduler.{key}", saved_scheduler.get(key), current.get(key))
                )
    return differences


def _check_policies(optimizer_policy: str, scheduler_policy: str) -> None:
    if optimizer_policy not in OPTIMIZER_POLICIES:
        raise ConfigError(f"optimizer_policy {optimizer_policy!r} is invalid", field="optimizer_policy",
                          hint=f"use one of {', '.join(OPTIMIZER_POLICIES)}")  # fmt: skip
    if scheduler_policy not in SCHEDULER_POLICIES:
        raise ConfigError(f"scheduler_policy {scheduler_policy!r} is invalid", field="scheduler_policy",
                          hint=f"use one of {', '.join(SCHEDULER_POLICIES)}")  # fmt: skip


# --- restore: applying --------------------------------------------------------------------


def _configured_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in group.items() if key != "params"}
        for group in optimizer.param_groups
    ]


def _apply_groups(optimizer: torch.optim.Optimizer, settings: list[dict[str, Any]]) -> None:
    for group, values in zip(optimizer.param_groups, settings, strict=True):
        group.update(values)


def _replay_schedule(scheduler: Any, optimizer: torch.optim.Optimizer, position: int) -> None:
    """Advance a freshly configured scheduler to ``position`` steps, which sets the optimizer's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    with warnings.catch_warnings():
        # torch warns when scheduler.step() runs before any optimizer.step(), which is the point here.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(position - int(scheduler.last_epoch)):
            scheduler.step()


def _apply_scheduler(
    scheduler: Any,
    optimizer: torch.optim.Optimizer | None,
    saved: Mapping[str, Any],
    policy: str,
    configured_groups: list[dict[str, Any]],
    configured_state: dict[str, Any],
) -> None:
    if policy == "keep_saved":
        scheduler.load_state_dict(saved)
        if optimizer is not None and saved.get("_last_lr"):
            # The saved optimizer groups may not have been loaded (weights-only), so set the schedule's lr here.
            for group, lr, base in zip(
                optimizer.param_groups, saved["_last_lr"], saved.get("base_lrs", []), strict=False
            ):
                group["lr"], group["initial_lr"] = lr, base
        return
    if optimizer is not None:
        _apply_groups(optimizer, configured_groups)
    scheduler.load_state_dict(configured_state)
    if policy == "override" and optimizer is not None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # NOTE: a plateau schedule depends on past metric values, so it cannot be replayed; it restarts.
            log.warning(
                "ReduceLROnPlateau cannot be advanced to the saved position: it restarts with the configured settings"
            )
            return
        _replay_schedule(scheduler, optimizer, int(saved.get("last_epoch", 0)))


def restore_rng(states: Mapping[str, Any]) -> list[str]:
    """Restore the RNG states saved by ``capture_rng``; return the names restored."""
    restored = []
    if "python" in states:
        python = states["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
        restored.append("python")
    if "numpy" in states:
        try:
            import numpy
        except ImportError:
            log.warning(
                "the checkpoint has a NumPy RNG state but NumPy is not installed: not restored"
            )
        else:
            saved = states["numpy"]
            numpy.random.set_state({
                "bit_generator": saved["bit_generator"],
                "state": {"key": numpy.asarray(saved["key"], dtype=numpy.uint32), "pos": saved["pos"]},
                "has_gauss": saved["has_gauss"],
                "gauss": saved["gauss"],
            })  # fmt: skip
            restored.append("numpy")
    if "torch" in states:
        torch.set_rng_state(states["torch"])
        restored.append("torch")
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
        restored.append("cuda")
    return restored


def _record_event(folder: str | os.PathLike[str] | None, kind: str, **details: Any) -> None:
    from kaggle_relay.runtime import writable
    from kaggle_relay.runtime.manifest import load_or_new

    target = Path(folder) if folder is not None else writable.default_checkpoint_folder()
    writable.reject_input_path(target)
    target.mkdir(parents=True, exist_ok=True)
    manifest = load_or_new(target)
    manifest.record_event(kind, **details)
    manifest.save()


def _as_state(state: Any) -> Mapping[str, Any]:
    if isinstance(state, Mapping):
        return state
    from kaggle_relay.runtime.load import load_checkpoint

    loaded = load_checkpoint(state)
    if not isinstance(loaded, Mapping):
        raise StateMismatchError(
            "checkpoint",
            type(loaded).__name__,
            "a dict",
            hint="save it with capture_training_state",
        )
    return loaded


def restore_training_state(
    state: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    optimizer_policy: str = "strict",
    scheduler_policy: str = "keep_saved",
    strip_prefix: bool = False,
    manifest_folder: str | os.PathLike[str] | None = None,
) -> ResumeReport:
    """Load a state from ``capture_training_state`` into fresh objects, all or nothing.

    ``state`` is the loaded dict, or a path or Candidate to load with
    ``load_checkpoint``. A weights-only resume is recorded as an event in the
    manifest of ``manifest_folder`` (default ``<root>/working/checkpoints``).
    Raises StateMismatchError before anything is loaded when the model does
    not match, or the optimizer does not match under ``optimizer_policy="strict"``.
    """
    _check_policies(optimizer_policy, scheduler_policy)
    saved = _as_state(state)
    if "model" not in saved:
        raise StateMismatchError("checkpoint", sorted(map(str, saved))[:8], "a 'model' entry",
                                 hint="pass a dict saved by capture_training_state")  # fmt: skip
    model_state, prefix = _model_state(saved["model"], strip_prefix)
    check_model_state(model, model_state)
    report = ResumeReport(epoch=saved.get("epoch"), step=saved.get("step"), stripped_prefix=prefix,
                          scheduler_policy=scheduler_policy)  # fmt: skip

    saved_optimizer = saved.get("optimizer")
    saved_scheduler = saved.get("scheduler")
    load_optimizer = _decide_optimizer(optimizer, saved_optimizer, optimizer_policy, report)
    if scheduler_policy == "keep_saved":
        _check_scheduler_class(scheduler, saved_scheduler)
    report.differences = compare_settings(saved_optimizer, optimizer, saved_scheduler, scheduler)
    for difference in report.differences:
        log.warning(
            "saved versus configured: %s (scheduler policy %s)", difference, scheduler_policy
        )

    # Every check passed: from here on, load.
    configured_groups = _configured_groups(optimizer) if optimizer is not None else []
    configured_scheduler = scheduler.state_dict() if scheduler is not None else {}
    model.load_state_dict(model_state)
    report.loaded.append("model")
    if load_optimizer and optimizer is not None and saved_optimizer is not None:
        optimizer.load_state_dict(saved_optimizer)
        report.loaded.append("optimizer")
    _restore_schedule(
        report, optimizer, scheduler, saved_scheduler, configured_groups, configured_scheduler
    )
    report.loaded.extend(f"rng:{name}" for name in restore_rng(saved.get("rng") or {}))
    if optimizer is not None:
        report.learning_rates = [float(group["lr"]) for group in optimizer.param_groups]

    if report.weights_only and saved_optimizer is not None:
        _record_event(manifest_folder, "weights-only-resume", step=report.step,
                      reason=report.optimizer_mismatch or "optimizer_policy='weights_only'")  # fmt: skip
    log.info("%s", report.summary())
    return report


def _decide_optimizer(
    optimizer: torch.optim.Optimizer | None,
    saved: Mapping[str, Any] | None,
    policy: str,
    report: ResumeReport,
) -> bool:
    """Return whether to load the saved optimizer state; raise on a mismatch under the strict policy."""
    if optimizer is None or saved is None:
        if saved is None and optimizer is not None:
            report.skipped.append("optimizer (none saved)")
        return False
    report.optimizer_mismatch = describe_optimizer_mismatch(optimizer, saved)
    if report.optimizer_mismatch and policy == "strict":
        raise StateMismatchError(
            "optimizer state",
            report.optimizer_mismatch,
            "the configured optimizer",
            hint="nothing was loaded; pass optimizer_policy='weights_only' to resume the weights with a fresh optimizer",
        )
    if policy == "weights_only":
        report.skipped.append("optimizer")
        return False
    return True


def _check_scheduler_class(scheduler: Any, saved: Mapping[str, Any] | None) -> None:
    """Raise when the saved schedule cannot continue in ``scheduler`` because it is another class."""
    if scheduler is None or saved is None:
        return
    configured = scheduler.state_dict()
    only_saved = sorted(set(saved) - set(configured))
    only_configured = sorted(set(configured) - set(saved))
    if only_saved and only_configured:
        # load_state_dict would copy the saved attributes onto the other class and step it with its own rule.
        raise StateMismatchError(
            "scheduler state",
            f"settings {', '.join(only_saved)}",
            f"{type(scheduler).__name__} with settings {', '.join(only_configured)}",
            hint="nothing was loaded; the saved schedule was another scheduler class, so pass "
            "scheduler_policy='override' or 'weights_only' to follow the configured one",
        )


def _restore_schedule(
    report: ResumeReport,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    saved: Mapping[str, Any] | None,
    configured_groups: list[dict[str, Any]],
    configured_state: dict[str, Any],
) -> None:
    if scheduler is None:
        # Without a scheduler the policy still decides whose optimizer settings win.
        if (
            optimizer is not None
            and "optimizer" in report.loaded
            and report.scheduler_policy != "keep_saved"
        ):
            _apply_groups(optimizer, configured_groups)
        return
    if saved is None:
        report.skipped.append("scheduler (none saved)")
        if optimizer is not None and "optimizer" in report.loaded and report.scheduler_policy != "keep_saved":
            # The saved optimizer groups replaced the configured ones (and their initial_lr). No saved
            # state gives the position of the configured schedule, so it starts from its beginning.
            _apply_groups(optimizer, configured_groups)
        return
    _apply_scheduler(
        scheduler, optimizer, saved, report.scheduler_policy, configured_groups, configured_state
    )
    if report.scheduler_policy == "weights_only":
        report.skipped.append("scheduler")
    else:
        report.loaded.append(f"scheduler ({report.scheduler_policy})")
