"""Real checkpoints on disk for the runtime tests: tiny torch models, cut and empty files, payloads."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kaggle_relay.runtime.manifest import Manifest, ManifestEntry, sha256_file


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(torch.nn.Linear(4, 2).state_dict())


def save(path: Path, obj: Any, *, legacy: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def training_checkpoint(path: Path, *, step: int, epoch: int = 1, **metrics: float) -> Path:
    """Save {"model", "optimizer", "epoch", "step", "metrics"} the way a training loop does."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    obj = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "metrics": dict(metrics),
    }
    return save(path, obj)


def cut(path: Path, keep: int | float) -> Path:
    """Cut a file to ``keep`` bytes (an int) or to that fraction of its length (a float)."""
    data = path.read_bytes()
    length = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:length])
    return path


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(path), metadata=metadata)
    return path


def record(folder: Path, *names: str, run_id: str = "run-1", **facts: Any) -> Manifest:
    """Write a manifest beside the files listing each one with its real size and hash."""
    manifest = Manifest(folder=folder, run_id=run_id)
    for name in names:
        path = folder / name
        manifest.upsert(
            ManifestEntry(
                file=name,
                bytes=path.stat().st_size,
                sha256=sha256_file(path),
                run_id=run_id,
                **facts.get(name, {}),
            )
        )
    manifest.save()
    return manifest


class CommandPayload:
    """Pickles as a call to os.system that creates ``marker``: a checkpoint that would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def save_with_main_class(path: Path) -> Path:
    """Save, from a separate script, an instance of a class defined in that script's __main__."""
    script = (
        "import sys, torch\n"
        "class TrainConfig:\n"
        "    def __init__(self): self.lr = 0.1\n"
        "torch.save({'model': torch.nn.Linear(2, 2).state_dict(), 'config': TrainConfig()}, sys.argv[1])\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    return path


def trainer_folder(folder: Path, *, step: int, parts: tuple[str, ...] = ("weights", "optimizer", "scheduler", "state")) -> Path:
    """Build a Hugging Face Trainer style ``checkpoint-N`` folder with the given parts."""
    folder.mkdir(parents=True, exist_ok=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    if "weights" in parts:
        save_safetensors(folder / "model.safetensors", model.state_dict())
    if "optimizer" in parts:
        save(folder / "optimizer.pt", optimizer.state_dict())
    if "scheduler" in parts:
        save(folder / "scheduler.pt", scheduler.state_dict())
    if "state" in parts:
        state = {"global_step": step, "epoch": 1.0, "log_history": [{"eval_loss": 0.5, "step": step}]}
        (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    return folder
