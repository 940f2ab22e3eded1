"""Helpers for chain tests: a short-session emulator and a project written by `kaggle-relay init`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kaggle_relay.relay.ledger import Ledger

OWNER = "relay-tester"
KEY = "relay-tester-key"
SESSION_LIMIT = 12.0


@dataclass
class Project:
    folder: Path
    config: Path

    @property
    def script(self) -> Path:
        return self.folder / "kernel" / "train.py"

    def edit_script(self, **constants: object) -> None:
        """Set module-level constants of the template training script (``EPOCHS=3``)."""
        text = self.script.read_text(encoding="utf-8")
        for name, value in constants.items():
            text, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.MULTILINE)
            assert count == 1, name
        self.script.write_text(text, encoding="utf-8")

    def append_config(self, text: str) -> None:
        with self.config.open("a", encoding="utf-8") as handle:
            handle.write(text)


def write_project(folder: Path, *, epochs: int = 6, epoch_seconds: float = 3.0) -> Project:
    """Write the template project for the emulator user, with a short training run."""
    from kaggle_relay.cli.main import main

    assert main(["init", str(folder), "--owner", OWNER, "--slug", "relay-chain-test", "--json"]) == 0
    project = Project(folder=folder, config=folder / "relay.toml")
    project.edit_script(EPOCHS=epochs, MIN_EPOCH_SECONDS=epoch_seconds)
    text = project.config.read_text(encoding="utf-8")
    text = text.replace("poll_seconds = 60 ", "poll_seconds = 0.5").replace("dataset_ready_seconds = 900", "dataset_ready_seconds = 60")
    project.config.write_text(text, encoding="utf-8")
    return project


@pytest.fixture
def short_emulator(tmp_path_factory: pytest.TempPathFactory, _isolated_kaggle_config: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An emulator with 12 s sessions, credentials for it, and KAGGLE_RELAY_API_ENDPOINT set."""
    from kaggle_relay.relay import client

    server: Any = start_emulator(tmp_path_factory.mktemp("emulator-data"), _isolated_kaggle_config, monkeypatch)
    try:
        yield server
    finally:
        server.stop()
        client.forget_clients()


# --- a fast test kernel and helpers for crash and failure tests ----------------------------

#: A training script that runs one epoch per session with the runtime, so a chain of
#: EPOCHS sessions takes a few seconds each. TROUBLE happens once, at TROUBLE_EPOCH, while
#: the file ONCE exists: "hang" sleeps past the session limit, "crash" leaves a truncated
#: checkpoint that no manifest lists and raises, "hold" waits until the test removes ONCE.
STEP_SCRIPT = '''"""A test kernel: one epoch per session, resumed with the runtime."""
import os
import time

import torch

from kaggle_relay.runtime import capture_training_state, start_session

EPOCHS = 2
ONCE = ""
TROUBLE = ""
TROUBLE_EPOCH = 0

session = start_session(patterns=["ckpt-*.pt"], require_keys=["model"])
model = torch.nn.Linear(2, 1)
epoch = 0
if session.checkpoint is not None:
    epoch = session.resume(model).epoch + 1
with torch.no_grad():
    model.weight.add_(1.0)
state = capture_training_state(model, epoch=epoch, step=epoch + 1)
session.save(state, f"ckpt-{epoch:04d}.pt", epoch=epoch, step=epoch + 1, metrics={"val_acc": 0.5 + epoch / 10})
print(f"saved epoch {epoch}", flush=True)

if ONCE and epoch == TROUBLE_EPOCH and os.path.exists(ONCE):
    if TROUBLE == "hold":
        while os.path.exists(ONCE):
            time.sleep(0.1)
    else:
        os.remove(ONCE)
    if TROUBLE == "hang":
        time.sleep(3600)
    if TROUBLE == "crash":
        data = (session.folder / f"ckpt-{epoch:04d}.pt").read_bytes()
        (session.folder / f"ckpt-{epoch + 1:04d}.pt").write_bytes(data[: len(data) // 2])
        raise RuntimeError("simulated failure after saving")
session.finish(done=epoch == EPOCHS - 1)
'''

KERNEL = f"{OWNER}/relay-chain-test"
DATASET = f"{OWNER}/relay-chain-test-handoff"


def write_step_project(folder: Path, *, epochs: int = 2, **trouble: object) -> Project:
    """Write the template project with STEP_SCRIPT as its kernel; ``trouble`` sets ONCE, TROUBLE..."""
    project = write_project(folder)
    project.script.write_text(STEP_SCRIPT, encoding="utf-8")
    project.edit_script(EPOCHS=epochs, **{name.upper(): value for name, value in trouble.items()})
    text = project.config.read_text(encoding="utf-8")
    project.config.write_text(text.replace("dataset_ready_seconds = 60", "dataset_ready_seconds = 15"), encoding="utf-8")
    return project


def start_emulator(data_dir: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> object:
    """Start an emulator for OWNER with ``settings`` and point this process (and its children) at it."""
    from kaggle_relay.emulator import Emulator, EmulatorConfig
    from kaggle_relay.relay import client

    options: dict[str, object] = {"session_limit": SESSION_LIMIT, "kill_grace": 1.0, "processing_delay": 0.3}
    options.update(settings)
    config = EmulatorConfig(data_dir=data_dir, users={OWNER: KEY}, **options)  # type: ignore[arg-type]
    credentials = config_dir / "kaggle.json"
    credentials.write_text(json.dumps({"username": OWNER, "key": KEY}))
    credentials.chmod(0o600)
    monkeypatch.setattr(tempfile, "tempdir", str(config_dir))
    server = Emulator(config).start()
    monkeypatch.setenv("KAGGLE_RELAY_API_ENDPOINT", server.url)
    client.forget_clients()
    return server


def wait_until(condition: Callable[[], object], *, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it is true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def kernel_versions(emulator: Any, kernel: str = KERNEL) -> list[int]:
    with emulator.store.lock:
        found = emulator.store.kernels.get(kernel)
        return [int(version["number"]) for version in found["versions"]] if found else []


def dataset_versions(emulator: Any, dataset: str = DATASET) -> list[int]:
    with emulator.store.lock:
        found = emulator.store.datasets.get(dataset)
        return [int(version["number"]) for version in found["versions"]] if found else []


LOOP_STEPS = ("push", "poll", "harvest", "publish", "ready")


def check_chain(emulator: Any, project: Project, chain: str = "digits") -> Ledger:
    """Check what a crash must never cause, and return the ledger.

    Every kernel and dataset version on the emulator belongs to one run of the
    ledger, so nothing was pushed or published twice. Every push attached the
    previous handoff, and handed-over steps only grow. Each run journalled
    every step of the loop once, in order.
    """
    from kaggle_relay.relay.ledger import Ledger

    ledger = Ledger.open(project.folder / ".relay", chain)
    pushed = [run.kernel_version for run in ledger.runs if run.kernel_version is not None]
    assert pushed == kernel_versions(emulator)
    published = [run.published.version for run in ledger.runs if run.published]
    assert published == dataset_versions(emulator)

    handed = [run.checkpoint.step for run in ledger.runs if run.published and run.checkpoint]
    assert handed == sorted(set(handed)), f"a handoff went back or repeated a step: {handed}"

    last = None
    for run in ledger.runs:
        if run.kernel_version is None:
            continue
        assert run.handoff_in == last, f"day {run.day} attached {run.handoff_in}, not {last}"
        last = run.published or last

        ended = [
            step["step"] for step in ledger.data.steps
            if step.get("run_id") == run.run_id and step["phase"] == "end" and step["step"] in LOOP_STEPS
        ]
        expected = list(LOOP_STEPS) if run.published else list(LOOP_STEPS[:3])
        assert ended == expected, f"day {run.day} journalled {ended}"
    return ledger


def next_day_process(project: Project, *options: str) -> subprocess.Popen[str]:
    """Start `kaggle-relay next-day --json` on ``project`` as a real subprocess."""
    command = [sys.executable, "-m", "kaggle_relay.cli.main", "next-day", "--config", str(project.config), "--json",
               *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """Wait for a next-day process; return its exit code and its JSON result."""
    out, err = process.communicate(timeout=timeout)
    assert out.strip(), f"no JSON on stdout; stderr:\n{err}"
    return process.returncode, json.loads(out)
