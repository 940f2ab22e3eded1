"""Train a small classifier, one session at a time, resuming exactly where the last one stopped.

kaggle-relay pushes this script with the runtime bundled in, attaches the
dataset holding the last checkpoint, and runs it again until the manifest
is marked done. Each session:

1. ``start_session`` checks the accelerator and the attached handoff (it stops
   the session when the handoff contains no valid checkpoint), and
   finds the newest valid checkpoint (this session's working folder first,
   then the handoff dataset under /kaggle/input);
2. the script restores model, optimizer, scheduler, epoch and every random
   number generator from it, then trains one epoch at a time and saves after
   each, atomically, with its validation accuracy in the manifest;
3. it stops before Kaggle's session limit (the session clock keeps a margin
   for the next epoch and save), and marks the run done after the last epoch.

The data is synthetic and built with torch alone, so the script needs no
download and no other package. The same seed gives the same final model
whether training runs in one session or in many (on CPU, tensor for tensor).
Replace ``make_data`` and ``build`` with your own data and model.
"""

from __future__ import annotations

import random
import time

import torch
from torch import nn

from kaggle_relay.runtime import capture_training_state, restore_training_state, start_session

SEED = 1234
EPOCHS = 12
BATCH_SIZE = 64
KEEP = 2
METRIC = "val_acc"
# Rehearsals only: a floor on each epoch's duration in seconds, so that a short session
# limit splits even this tiny model's training over several sessions. Keep 0 on Kaggle.
MIN_EPOCH_SECONDS = 0.0


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return train and validation tensors of a fixed problem: 10 classes of noisy 64-pixel prototypes."""
    generator = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(10, 64, generator=generator) < 0.3).float()
    labels = torch.arange(2000) % 10
    features = prototypes[labels] + 1.2 * torch.randn(len(labels), 64, generator=generator)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    features, labels = features[order], labels[order]
    split = int(0.8 * len(labels))
    return features[:split], labels[:split], features[split:], labels[split:]


def build() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(SEED)
    random.seed(SEED)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    return model, optimizer, scheduler


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                    labels: torch.Tensor, shuffle: torch.Generator) -> int:
    """Train on every batch once, in an order drawn from ``shuffle``; return the number of steps."""
    model.train()
    order = torch.randperm(len(labels), generator=shuffle)
    steps = 0
    for index in range(0, len(order), BATCH_SIZE):
        batch = order[index : index + BATCH_SIZE]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(features).argmax(dim=1) == labels).float().mean())


def main() -> None:
    # The newest checkpoint is the exact resume point, so no metric is given for selection.
    session = start_session(patterns=["ckpt-*.pt"], require_keys=["model", "optimizer"], keep=KEEP)
    # Retention still keeps the best checkpoint by validation accuracy next to the newest ones.
    session.metric, session.mode = METRIC, "max"

    train_x, train_y, val_x, val_y = make_data()
    model, optimizer, scheduler = build()
    shuffle = torch.Generator().manual_seed(SEED)
    start_epoch, step = 0, 0
    if session.checkpoint is not None:
        state = session.load()
        report = restore_training_state(state, model, optimizer, scheduler, manifest_folder=session.folder)
        shuffle.set_state(state["extra"]["shuffle"])
        # The last session's epoch time lets the clock decide before this session's first epoch.
        session.clock.note_duration("epoch", float(state["extra"]["epoch_seconds"]))
        start_epoch, step = int(report.epoch) + 1, int(report.step)
        print(f"resumed from {session.checkpoint.path} at epoch {start_epoch}")
    print(f"training epochs {start_epoch}..{EPOCHS - 1}, {session.clock.remaining():.0f} s left")

    last = start_epoch - 1
    for epoch in range(start_epoch, EPOCHS):
        if session.should_stop():
            print(f"stopping before the session limit ({session.clock.remaining():.0f} s left)")
            break
        began = time.monotonic()
        with session.epoch():
            step += train_one_epoch(model, optimizer, train_x, train_y, shuffle)
            scheduler.step()
            time.sleep(max(0.0, MIN_EPOCH_SECONDS - (time.monotonic() - began)))
        accuracy = evaluate(model, val_x, val_y)
        extra = {"shuffle": shuffle.get_state(), "epoch_seconds": time.monotonic() - began}
        state = capture_training_state(model, optimizer, scheduler, epoch=epoch, step=step, extra=extra)
        session.save(state, f"ckpt-{epoch:04d}.pt", epoch=epoch, step=step, metrics={METRIC: accuracy})
        print(f"epoch {epoch}: {METRIC} {accuracy:.4f}")
        last = epoch

    finished = last == EPOCHS - 1
    session.finish(done=finished)
    print("training finished; marked the run done" if finished else f"saved up to epoch {last}")


if __name__ == "__main__":
    main()
