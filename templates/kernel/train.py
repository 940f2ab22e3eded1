"""Train a small digit classifier, one session at a time, resuming exactly where the last one stopped.

kaggle-relay pushes this script with the runtime bundled in, attaches the
dataset holding the last checkpoint, and runs it again until the manifest
is marked done. Each session:

1. finds the newest checkpoint (this session's working folder first, then
   the handoff dataset mounted under /kaggle/input) and restores model,
   optimizer, scheduler, epoch and every random number generator;
2. trains one epoch at a time and saves after each, atomically, with its
   validation accuracy in the manifest;
3. stops before Kaggle's session limit (the session clock keeps a margin
   for the next epoch and save), and marks the run done after the last epoch.

The same seed gives the same final model whether training runs in one
session or in many (on CPU, tensor for tensor).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import torch
from torch import nn

from kaggle_relay.runtime import writable
from kaggle_relay.runtime.clock import SessionClock
from kaggle_relay.runtime.load import load_checkpoint
from kaggle_relay.runtime.manifest import MANIFEST_NAME, load_manifest
from kaggle_relay.runtime.save import mark_done, save_checkpoint
from kaggle_relay.runtime.state import capture_training_state, restore_training_state

SEED = 1234
EPOCHS = 12
BATCH_SIZE = 64
KEEP = 2
# Rehearsals only: a floor on each epoch's duration in seconds, so that a short session
# limit splits even this tiny model's training over several sessions. Keep 0 on Kaggle.
MIN_EPOCH_SECONDS = 0.0


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Return train and validation tensors: scikit-learn's 8x8 digits, or a synthetic stand-in."""
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        features = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        name = "scikit-learn digits"
    except ImportError:
        # Ten noisy prototypes of 64 pixels; deterministic, so every session gets the same data.
        generator = torch.Generator().manual_seed(0)
        prototypes = torch.rand(10, 64, generator=generator)
        labels = torch.arange(1800) % 10
        features = prototypes[labels] + 0.9 * torch.randn(1800, 64, generator=generator)
        name = "synthetic digits (scikit-learn not installed)"
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    features, labels = features[order], labels[order]
    split = int(0.8 * len(labels))
    return features[:split], labels[:split], features[split:], labels[split:], name


def build() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(SEED)
    random.seed(SEED)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    return model, optimizer, scheduler


def newest_checkpoint() -> Path | None:
    """Return the newest checkpoint recorded in a manifest: working folder first, then inputs."""
    expected = os.environ.get("KAGGLE_RELAY_HANDOFF")
    folders = [writable.default_checkpoint_folder()]
    folders += sorted(path.parent for path in writable.input_root().glob("**/" + MANIFEST_NAME))
    for folder in folders:
        manifest = load_manifest(folder) if folder.is_dir() else None
        if manifest is None or not manifest.files:
            continue
        if folder != writable.default_checkpoint_folder() and expected:
            handoff = manifest.handoff or {}
            wanted = json.loads(expected)
            if (handoff.get("dataset"), handoff.get("version")) != (wanted["dataset"], wanted["version"]):
                print(f"skipping {folder}: its handoff {handoff} is not the expected {wanted}")
                continue
        newest = manifest.newest()
        if newest is not None:
            return folder / newest.file
    if expected:
        raise SystemExit(f"the handoff {expected} is not mounted under {writable.input_root()}; stopping")
    return None


def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(features).argmax(dim=1) == labels).float().mean())


def main() -> None:
    clock = SessionClock()
    train_x, train_y, val_x, val_y, data_name = load_data()
    model, optimizer, scheduler = build()
    shuffle = torch.Generator().manual_seed(SEED)

    start_epoch, step = 0, 0
    resume = newest_checkpoint()
    if resume is not None:
        state = load_checkpoint(resume, trust="weights_only")
        restore_training_state(state, model, optimizer, scheduler)
        shuffle.set_state(state["extra"]["shuffle"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        print(f"resumed from {resume} at epoch {start_epoch}")
    print(f"training on {data_name}: epochs {start_epoch}..{EPOCHS - 1}, {clock.remaining():.0f} s left")

    with clock.handle_sigterm():
        for epoch in range(start_epoch, EPOCHS):
            began = time.monotonic()
            with clock.measure("epoch"):
                model.train()
                order = torch.randperm(len(train_y), generator=shuffle)
                for index in range(0, len(order), BATCH_SIZE):
                    batch = order[index : index + BATCH_SIZE]
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
                    loss.backward()
                    optimizer.step()
                    step += 1
                scheduler.step()
                time.sleep(max(0.0, MIN_EPOCH_SECONDS - (time.monotonic() - began)))
            accuracy = evaluate(model, val_x, val_y)
            state = capture_training_state(
                model, optimizer, scheduler, epoch=epoch, step=step, extra={"shuffle": shuffle.get_state()}
            )
            with clock.measure("save"):
                save_checkpoint(
                    state, f"ckpt-{epoch:04d}.pt", epoch=epoch, step=step,
                    metrics={"val_acc": accuracy}, keep=KEEP, metric="val_acc", mode="max",
                )
            print(f"epoch {epoch}: val_acc {accuracy:.4f}")
            if epoch == EPOCHS - 1:
                mark_done()
                print("training finished; marked the run done")
            elif clock.should_stop():
                print(f"stopping before the session limit ({clock.remaining():.0f} s left)")
                break


if __name__ == "__main__":
    main()
