"""Run the README's runtime examples as written, so the documented calls stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kaggle_relay.errors import AcceleratorMismatchError

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def training_helpers(epochs: int) -> dict[str, object]:
    """The names the README's training example leaves to the user: a tiny model and loop."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(32, 4), torch.randint(0, 2, (32,))

    def build() -> tuple[object, object, object]:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
        return model, optimizer, scheduler

    def train_one_epoch(model, optimizer, scheduler) -> int:  # type: ignore[no-untyped-def]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        scheduler.step()
        return 1

    def evaluate(model) -> float:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(inputs), targets))

    return {"build": build, "train_one_epoch": train_one_epoch, "evaluate": evaluate, "epochs": epochs}


def test_readme_training_example_resumes_and_finishes(kaggle_root: Path) -> None:
    example = python_blocks()[0]
    assert "start_session" in example

    first: dict[str, object] = training_helpers(epochs=3)
    exec(compile(example, "README training example", "exec"), first)
    second: dict[str, object] = training_helpers(epochs=3)
    exec(compile(example, "README training example, second session", "exec"), second)

    assert second["start_epoch"] == 3
    assert second["step"] == 3
    manifest = (kaggle_root / "working" / "checkpoints" / "relay-manifest.json").read_text(encoding="utf-8")
    assert '"done": true' in manifest


def test_readme_runtime_calls_work_as_shown(kaggle_root: Path) -> None:
    example = python_blocks()[1]
    accelerator_line = 'check_accelerator("NvidiaTeslaT4")'
    assert accelerator_line in example
    before, _, _ = example.partition(accelerator_line)

    # A dataset the README's calls find under input/, written by an earlier session.
    from kaggle_relay.runtime import capture_training_state, save_checkpoint

    model, optimizer, scheduler = training_helpers(epochs=1)["build"]()  # type: ignore[operator]
    earlier = kaggle_root.parent / "earlier-session"
    earlier.mkdir()
    for name, step, loss in (("ckpt-step000100.pt", 100, 0.5), ("ckpt-step000200.pt", 200, 0.3),
                             ("checkpoint_000300.pth", 300, 0.4)):
        state = capture_training_state(model, optimizer, scheduler, epoch=step // 100, step=step)
        state["val_acc"] = 1.0 - loss
        save_checkpoint(state, name, folder=earlier, epoch=step // 100, step=step,
                        metrics={"val_loss": loss, "val_acc": 1.0 - loss})
    dataset = earlier.rename(kaggle_root / "input" / "my-checkpoints")
    snapshot = sorted((path.name, path.stat().st_size) for path in dataset.iterdir())

    names: dict[str, object] = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    exec(compile(before, "README runtime calls", "exec"), names)

    assert Path(str(names["best"].path)).name == "ckpt-step000200.pt"  # type: ignore[attr-defined]
    assert Path(str(names["latest"].path)).name == "checkpoint_000300.pth"  # type: ignore[attr-defined]
    assert Path(names["path"]).parent == kaggle_root / "working" / "checkpoints"  # type: ignore[arg-type]
    assert sorted((path.name, path.stat().st_size) for path in dataset.iterdir()) == snapshot
    with pytest.raises(AcceleratorMismatchError):
        exec(compile(accelerator_line, "README accelerator check", "exec"), names)
