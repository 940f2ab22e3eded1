"""Tests of the session clock: deadline sources, margin, measured reserve and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kaggle_relay.errors import ConfigError
from kaggle_relay.runtime.clock import (
    DEFAULT_LIMIT,
    TPU_LIMIT,
    SessionClock,
    default_margin,
    process_start_time,
)


class ManualTime:
    """A time source that moves only when the test moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_session_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KAGGLE_RELAY_SESSION_DEADLINE",
        "KAGGLE_RELAY_SESSION_LIMIT",
        "KAGGLE_RELAY_ACCELERATOR",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [("none", DEFAULT_LIMIT), ("NvidiaTeslaT4", DEFAULT_LIMIT), ("TpuV5E8", TPU_LIMIT)],
)
def test_clock_default_limit_follows_accelerator(accelerator: str, expected: float) -> None:
    clock = SessionClock(accelerator=accelerator, time_source=ManualTime())
    assert clock.limit == expected
    assert clock.source == "Kaggle default"


def test_clock_reads_accelerator_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_RELAY_ACCELERATOR", "TpuV5E8")
    assert SessionClock(time_source=ManualTime()).limit == TPU_LIMIT


def test_clock_deadline_env_beats_limit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    now = ManualTime(5000.0)
    monkeypatch.setenv("KAGGLE_RELAY_SESSION_DEADLINE", "5600")
    monkeypatch.setenv("KAGGLE_RELAY_SESSION_LIMIT", "100")
    clock = SessionClock(time_source=now)
    assert clock.deadline == 5600.0
    assert clock.source == "KAGGLE_RELAY_SESSION_DEADLINE"


def test_clock_limit_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_RELAY_SESSION_LIMIT", "120")
    clock = SessionClock(time_source=ManualTime(10.0))
    assert clock.deadline == 130.0
    assert clock.source == "KAGGLE_RELAY_SESSION_LIMIT"


def test_clock_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_RELAY_SESSION_DEADLINE", "99999")
    assert SessionClock(limit=60, time_source=ManualTime(0.0)).deadline == 60.0
    assert SessionClock(deadline=42, limit=60, time_source=ManualTime(0.0)).deadline == 42.0


def test_clock_rejects_non_numeric_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_RELAY_SESSION_LIMIT", "12h")
    with pytest.raises(ConfigError, match="KAGGLE_RELAY_SESSION_LIMIT"):
        SessionClock(time_source=ManualTime())


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(43200.0, 1296.0), (3600.0, 300.0), (60.0, 6.0)],
)
def test_default_margin_is_proportional_with_floor(limit: float, expected: float) -> None:
    assert default_margin(limit) == pytest.approx(expected)


def test_clock_stops_when_margin_reached() -> None:
    now = ManualTime(0.0)
    clock = SessionClock(limit=1000, margin=100, time_source=now)
    now.now = 899.0
    assert not clock.should_stop()
    now.now = 900.0
    assert clock.should_stop()
    assert clock.remaining() == 100.0


def test_clock_reserves_last_epoch_and_longest_save() -> None:
    now = ManualTime(0.0)
    clock = SessionClock(limit=1000, margin=100, time_source=now)
    with clock.measure("save"):
        now.now += 50.0
    with clock.measure("save"):
        now.now += 10.0
    with clock.measure("epoch"):
        now.now += 200.0
    assert clock.reserve() == 250.0
    now.now = 649.0
    assert not clock.should_stop()
    now.now = 650.0
    assert clock.should_stop()


def test_clock_process_start_is_in_the_past() -> None:
    import time

    started = process_start_time()
    assert started <= time.time()
    assert SessionClock().start == pytest.approx(started)


def test_sigterm_handler_restores_previous_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    clock = SessionClock(limit=1000, time_source=ManualTime())
    with clock.handle_sigterm():
        assert signal.getsignal(signal.SIGTERM) == clock._on_sigterm
        signal.raise_signal(signal.SIGTERM)
        assert clock.should_stop()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_handler_not_installed_outside_main_thread() -> None:
    clock = SessionClock(limit=1000, time_source=ManualTime())
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(clock.install_sigterm_handler()))
    worker.start()
    worker.join()
    assert results == [False]


TRAINING_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from kaggle_relay.runtime.clock import SessionClock
    from kaggle_relay.runtime.save import save_checkpoint

    folder = sys.argv[1]
    clock = SessionClock(limit=3600, margin=1)
    model = torch.nn.Linear(4, 2)
    step = 0
    with clock.handle_sigterm():
        print("ready", flush=True)
        while not clock.should_stop():
            model.weight.data.add_(0.001)
            step += 1
        save_checkpoint({"model": model.state_dict()}, "last.pt", folder=folder, step=step)
    print("saved", step, flush=True)
    """
)


@pytest.mark.slow
def test_sigterm_lets_training_process_save_and_exit(kaggle_root: Path) -> None:
    folder = kaggle_root / "working" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, "-c", TRAINING_SCRIPT, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.startswith("saved")
    assert (folder / "last.pt").is_file()
    assert (folder / "relay-manifest.json").is_file()
