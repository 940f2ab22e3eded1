from __future__ import annotations

import logging
import random

import pytest
from pydantic import ValidationError

from kaggle_relay.errors import (
    DatasetProcessingError,
    KaggleAuthError,
    KaggleRateLimitError,
    KaggleRejectedError,
    KaggleUnavailableError,
)
from kaggle_relay.relay.retry import DEFAULT_POLICIES, RetryPolicy, retrying


class Flaky:
    """A call that raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def rate_limited(retry_after: float | None = None) -> KaggleRateLimitError:
    return KaggleRateLimitError("429", retry_after=retry_after, status=429, call="GetKernelSessionStatus")


def unavailable() -> KaggleUnavailableError:
    return KaggleUnavailableError("503", status=503, call="CreateDatasetVersion")


def test_read_retries_rate_limits_then_succeeds() -> None:
    sleeps: list[float] = []
    flaky = Flaky(rate_limited(1.0), rate_limited(1.0), rate_limited(1.0))
    assert retrying("read", sleep=sleeps.append)(flaky) == "ok"
    assert flaky.calls == 4
    assert len(sleeps) == 3


def test_retry_after_is_a_floor_for_the_wait() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_seconds=0.1, max_seconds=0.2, total_seconds=100)
    retrying("read", policy=policy, sleep=sleeps.append)(Flaky(rate_limited(7.0)))
    assert sleeps[0] >= 7.0


def test_backoff_grows_and_is_capped() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=7, initial_seconds=1.0, max_seconds=8.0, total_seconds=1000)
    errors = [unavailable() for _ in range(6)]
    retrying("create", policy=policy, sleep=sleeps.append, rng=random.Random(0))(Flaky(*errors))
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for slept, ceiling in zip(sleeps, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling


def test_jitter_varies_the_waits() -> None:
    policy = RetryPolicy(max_attempts=2, initial_seconds=10.0, max_seconds=10.0, total_seconds=1000)
    waits = set()
    for seed in range(5):
        sleeps: list[float] = []
        retrying("read", policy=policy, sleep=sleeps.append, rng=random.Random(seed))(Flaky(unavailable()))
        waits.add(sleeps[0])
    assert len(waits) > 1


def test_gives_up_after_max_attempts_with_typed_error() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_seconds=0.01, max_seconds=0.01, total_seconds=100)
    flaky = Flaky(*[unavailable() for _ in range(5)])
    with pytest.raises(KaggleUnavailableError) as caught:
        retrying("read", policy=policy, sleep=sleeps.append)(flaky)
    assert flaky.calls == 3
    assert any("gave up after 3 attempts" in note for note in caught.value.__notes__)


def test_stops_before_total_time_would_pass() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=10, initial_seconds=1.0, max_seconds=1.0, total_seconds=30)
    flaky = Flaky(rate_limited(60.0), rate_limited(60.0))
    with pytest.raises(KaggleRateLimitError):
        retrying("read", policy=policy, sleep=sleeps.append)(flaky)
    assert flaky.calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        KaggleAuthError("401", status=401),
        KaggleRejectedError("400", status=400),
        DatasetProcessingError("403", status=403),
    ],
)
def test_errors_that_cannot_succeed_are_not_retried(error: Exception) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        retrying("create", sleep=lambda _: None)(flaky)
    assert flaky.calls == 1


def test_push_is_not_retried_after_unavailable() -> None:
    flaky = Flaky(unavailable())
    with pytest.raises(KaggleUnavailableError):
        retrying("push", sleep=lambda _: None)(flaky)
    assert flaky.calls == 1


def test_push_is_retried_after_rate_limit() -> None:
    flaky = Flaky(rate_limited(1.0))
    assert retrying("push", sleep=lambda _: None)(flaky) == "ok"
    assert flaky.calls == 2


def test_each_failed_attempt_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(max_attempts=3, initial_seconds=0.01, max_seconds=0.01, total_seconds=100)
    with caplog.at_level(logging.WARNING, logger="kaggle_relay.relay.retry"), pytest.raises(KaggleUnavailableError):
        retrying("read", policy=policy, what="status alice/train-digits/3", sleep=lambda _: None)(
            Flaky(*[unavailable() for _ in range(3)])
        )
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    for number, message in enumerate(messages, start=1):
        assert f"attempt {number}/3" in message
        assert "alice/train-digits/3" in message
    assert all(record.levelno == logging.WARNING for record in caplog.records)


def test_policy_rejects_max_below_initial() -> None:
    with pytest.raises(ValidationError, match="max_seconds"):
        RetryPolicy(initial_seconds=10, max_seconds=1)


def test_every_kind_has_a_default_policy() -> None:
    assert set(DEFAULT_POLICIES) == {"read", "create", "upload", "push"}
