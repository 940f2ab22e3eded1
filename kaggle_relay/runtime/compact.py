"""Compact export: a smaller checkpoint for handoff or inference.

A compact checkpoint drops the optimizer, scheduler and gradient scaler state
and casts floating-point tensors to half precision, which is about a quarter
of a full Adam checkpoint. Integer tensors (step counters, RNG states) keep
their type. The dtype is chosen by name: ``"fp16"`` (float16, the default) or
``"bf16"`` (bfloat16, which keeps float32's range).

``export_compact`` always writes the torch zip format (or safetensors for a
plain state dict when asked), also from a legacy torch file. It never writes
into the source file: the source may be memory-mapped by this process, and
rewriting the bytes a mapping points into gives zeros or a bus error. The new
file is written under a temporary sibling name and renamed, so a mapping of
the old file stays valid. The source's manifest facts (epoch, step, metrics,
run id) carry over to the new entry.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from kaggle_relay.errors import ConfigError
from kaggle_relay.runtime import atomic, writable
from kaggle_relay.runtime.manifest import (
    ManifestEntry,
    load_manifest,
    load_or_new,
    sha256_file,
    utc_now,
)

log = logging.getLogger(__name__)

# Top-level keys that hold training-only state, dropped by a compact export.
TRAINING_STATE_KEYS = frozenset(
    {
        "optimizer", "optimizer_state", "optimizer_state_dict", "optim", "opt",
        "scheduler", "lr_scheduler", "scheduler_state", "scheduler_state_dict", "sched",
        "scaler", "grad_scaler",
    }
)  # fmt: skip

HALF_DTYPES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip
_CAST_FROM = (torch.float32, torch.float64)
FORMAT_SAFETENSORS = "safetensors"
FORMAT_TORCH = "torch"


def half_dtype(name: bool | str) -> torch.dtype:
    """Return the torch dtype for a compact dtype name; ``True`` means fp16."""
    if name is True:
        return torch.float16
    if isinstance(name, str) and name.lower() in HALF_DTYPES:
        return HALF_DTYPES[name.lower()]
    raise ConfigError(
        f"compact dtype {name!r} is invalid",
        field="compact",
        hint=f"use one of {', '.join(HALF_DTYPES)}",
    )


def copy_mapping(source: Mapping[Any, Any], items: Iterable[tuple[Any, Any]]) -> dict[Any, Any]:
    """Return a dict (an OrderedDict for one) of ``items``, keeping a state dict's ``_metadata``.

    ``Module.load_state_dict`` reads the module versions from ``_metadata``.
    """
    copied: dict[Any, Any] = (
        collections.OrderedDict(items)
        if isinstance(source, collections.OrderedDict)
        else dict(items)
    )
    metadata = getattr(source, "_metadata", None)
    if metadata is not None:
        copied._metadata = metadata  # type: ignore[attr-defined]
    return copied


def _cast(tensor: torch.Tensor, dtype: torch.dtype, where: str) -> torch.Tensor:
    if tensor.dtype not in _CAST_FROM:
        return tensor
    cast = tensor.detach().to(dtype)
    if dtype == torch.float16 and torch.isinf(cast).any() and not torch.isinf(tensor).any():
        log.warning(
            "%s has values beyond the float16 range (65504): they became inf; use 'bf16'", where
        )
    return cast


def _compact_value(value: Any, dtype: torch.dtype, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        return _cast(value, dtype, where)
    if isinstance(value, Mapping):
        return copy_mapping(
            value,
            (
                (key, _compact_value(item, dtype, f"{where}[{key!r}]"))
                for key, item in value.items()
            ),
        )
    if isinstance(value, list | tuple):
        return type(value)(
            _compact_value(item, dtype, f"{where}[{index}]") for index, item in enumerate(value)
        )
    return value


def compact_state(obj: Any, *, dtype: bool | str = "fp16") -> Any:
    """Return a copy of ``obj`` without training-only state and with float tensors cast to half.

    Only top-level keys named in TRAINING_STATE_KEYS are dropped, so a plain
    state dict keeps every entry. The source object is not modified.
    """
    target = half_dtype(dtype)
    if isinstance(obj, Mapping):
        dropped = sorted(str(key) for key in obj if str(key).lower() in TRAINING_STATE_KEYS)
        if dropped:
            log.debug("compact export drops %s", ", ".join(dropped))
        kept = copy_mapping(
            obj,
            (
                (key, value)
                for key, value in obj.items()
                if str(key).lower() not in TRAINING_STATE_KEYS
            ),
        )
        return _compact_value(kept, target, "checkpoint")
    return _compact_value(obj, target, "checkpoint")


def plain_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return ``obj`` (or its ``"model"`` entry) as a flat name-to-tensor dict, or raise ConfigError."""
    for candidate in (obj, obj.get("model") if isinstance(obj, Mapping) else None):
        if (
            isinstance(candidate, Mapping)
            and candidate
            and all(
                isinstance(key, str) and isinstance(value, torch.Tensor)
                for key, value in candidate.items()
            )
        ):
            return dict(candidate)
    raise ConfigError(
        "safetensors export needs a flat name-to-tensor dict, and this checkpoint is not one",
        field="format",
        hint="export with format='torch', or pass the model's state_dict()",
    )


def _source_facts(source: Path, obj: Any) -> dict[str, Any]:
    """Return epoch, step, metrics and run id from the source's manifest entry, else from the checkpoint."""
    manifest = load_manifest(source.parent)
    entry = manifest.entry(source.name) if manifest is not None else None
    if entry is not None:
        run_id = entry.run_id or (manifest.run_id if manifest is not None else "")
        return {
            "epoch": entry.epoch,
            "step": entry.step,
            "metrics": dict(entry.metrics),
            "run_id": run_id,
        }
    facts: dict[str, Any] = {"epoch": None, "step": None, "metrics": {}, "run_id": ""}
    if isinstance(obj, Mapping):
        for key in ("epoch", "step"):
            if isinstance(obj.get(key), int) and not isinstance(obj.get(key), bool):
                facts[key] = obj[key]
    return facts


def default_compact_name(source: Path, dtype: bool | str, file_format: str) -> str:
    suffix = ".safetensors" if file_format == FORMAT_SAFETENSORS else ".pt"
    label = "bf16" if half_dtype(dtype) == torch.bfloat16 else "fp16"
    return f"{source.stem}-{label}{suffix}"


def _destination(
    source: Path, dest: str | os.PathLike[str] | None, dtype: bool | str, file_format: str
) -> Path:
    if dest is not None:
        return writable.reject_input_path(dest)
    name = default_compact_name(source, dtype, file_format)
    if source.resolve().is_relative_to(writable.input_root()):
        return writable.default_checkpoint_folder() / name
    return source.resolve().parent / name


def export_compact(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    dtype: bool | str = "fp16",
    format: str = FORMAT_TORCH,
    trust: Any = None,
) -> ManifestEntry:
    """Write a compact copy of the checkpoint at ``source`` and record it in the destination's manifest.

    ``dest`` defaults to ``<stem>-fp16.pt`` (or ``-bf16``, ``.safetensors``)
    beside the source, or in ``<root>/working/checkpoints`` when the source
    is under the read-only input folder. ``dest`` may equal ``source``: the
    file is then replaced by rename, never rewritten in place. ``trust`` is
    passed to ``load_checkpoint`` for sources that need trusted globals.
    """
    from kaggle_relay.runtime.load import load_checkpoint

    if format not in (FORMAT_TORCH, FORMAT_SAFETENSORS):
        raise ConfigError(
            f"export format {format!r} is invalid",
            field="format",
            hint="use 'torch' or 'safetensors'",
        )
    source = Path(source)
    target = _destination(source, dest, dtype, format)
    obj = load_checkpoint(source, trust=trust)
    facts = _source_facts(source, obj)

    if format == FORMAT_TORCH:
        from kaggle_relay.runtime.save import save_checkpoint

        return save_checkpoint(obj, target.name, folder=target.parent, compact=dtype, **facts)
    return _save_safetensors(compact_state(plain_state_dict(obj), dtype=dtype), target, facts)


def _save_safetensors(
    tensors: dict[str, torch.Tensor], target: Path, facts: dict[str, Any]
) -> ManifestEntry:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    metadata = {key: str(facts[key]) for key in ("epoch", "step") if facts.get(key) is not None}
    with atomic.atomic_path(target) as temporary:
        save_file(contiguous, str(temporary), metadata=metadata or None)

    entry = ManifestEntry(
        file=target.name, bytes=target.stat().st_size, sha256=sha256_file(target), format=FORMAT_SAFETENSORS,
        epoch=facts["epoch"], step=facts["step"], metrics=facts["metrics"], created=utc_now(),
        run_id=facts["run_id"], compact=True,
    )  # fmt: skip
    manifest = load_or_new(target.parent, run_id=facts["run_id"])
    manifest.upsert(entry)
    manifest.save()
    log.info("exported compact safetensors %s (%d bytes)", target, entry.bytes)
    return entry
