"""The emulator's transfer pacing (``--transfer-rate``), on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_relay.emulator import EmulatorConfig
from kaggle_relay.emulator.handler import Pace
from kaggle_relay.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pace_sleeps_until_rate_allows_bytes() -> None:
    clock = FakeClock()
    pace = Pace(1_000_000, clock=clock, sleep=clock.sleep)

    pace.wait(500_000)
    clock.now += 0.2
    pace.wait(500_000)

    assert clock.slept == [pytest.approx(0.5), pytest.approx(0.3)]


def test_pace_of_zero_never_sleeps() -> None:
    clock = FakeClock()
    pace = Pace(0, clock=clock, sleep=clock.sleep)

    pace.wait(10**9)

    assert clock.slept == []


def test_negative_transfer_rate_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="transfer rate"):
        EmulatorConfig(data_dir=tmp_path, transfer_rate=-1)
