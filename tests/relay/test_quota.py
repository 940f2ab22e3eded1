"""Weekly accelerator quota: usage from the ledger's runs, refusal with the time it fits again."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from kaggle_relay.errors import QuotaExceededError
from kaggle_relay.relay.config import ChainConfig, Quota
from kaggle_relay.relay.ledger import Run
from kaggle_relay.relay.quota import check_quota, format_time, usage

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
HOUR = 3600


def chain(accelerator: str = "NvidiaTeslaT4", timeout: int | None = 12 * HOUR) -> ChainConfig:
    return ChainConfig(
        name="digits", kernel="kernel", dataset="alice/digits-handoff", accelerator=accelerator,
        session_timeout=timeout, project_dir=Path("."),
    )


def run(day: int, hours_ago: float, hours: float | None, accelerator: str = "NvidiaTeslaT4") -> Run:
    start = NOW - dt.timedelta(hours=hours_ago)
    end = None if hours is None else format_time(start + dt.timedelta(hours=hours))
    return Run(
        day=day, run_id=f"d{day}", kernel_version=day, accelerator=accelerator, session_limit=12 * HOUR,
        pushed_at=format_time(start), finished_at=end,
    )


def test_usage_sums_finished_runs_in_last_week() -> None:
    runs = [run(1, 200, 10), run(2, 50, 11), run(3, 30, 5)]

    used = usage(runs, Quota(), "gpu", now=NOW)

    assert used.used_hours == pytest.approx(16)
    assert used.quota_hours == 30


def test_run_in_flight_is_charged_its_limit() -> None:
    used = usage([run(1, 1, None)], Quota(), "gpu", now=NOW)

    assert used.used_hours == pytest.approx(12)


def test_observed_duration_is_capped_at_limit() -> None:
    used = usage([run(1, 40, 20)], Quota(), "gpu", now=NOW)

    assert used.used_hours == pytest.approx(12)


def test_cpu_and_tpu_runs_do_not_count_for_gpu() -> None:
    runs = [run(1, 10, 5, accelerator="none"), run(2, 10, 5, accelerator="TpuV5E8")]

    assert usage(runs, Quota(), "gpu", now=NOW).used_seconds == 0
    assert usage(runs, Quota(), "tpu", now=NOW).used_hours == pytest.approx(5)


def test_session_within_quota_is_allowed() -> None:
    check_quota([run(1, 30, 12)], Quota(), chain(), now=NOW)


def test_session_past_quota_is_rejected_with_time() -> None:
    runs = [run(1, 100, 12), run(2, 40, 12)]

    with pytest.raises(QuotaExceededError) as caught:
        check_quota(runs, Quota(gpu_hours=30), chain(), now=NOW)

    error = caught.value
    assert error.used == pytest.approx(24 * HOUR)
    assert error.quota == pytest.approx(30 * HOUR)
    assert error.available_at == format_time(NOW - dt.timedelta(hours=100) + dt.timedelta(days=7))
    assert "next-day" in error.hint


def test_session_longer_than_quota_never_fits() -> None:
    with pytest.raises(QuotaExceededError) as caught:
        check_quota([], Quota(gpu_hours=5), chain(), now=NOW)

    assert caught.value.available_at == ""
    assert "session_timeout" in caught.value.hint


def test_cpu_chain_has_no_quota() -> None:
    check_quota([run(1, 1, None)] * 10, Quota(gpu_hours=0), chain(accelerator="none", timeout=None), now=NOW)
