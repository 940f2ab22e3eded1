"""Retry policies, one per kind of Kaggle call.

Retrying is for a single call that failed for a reason that may pass
(rate limit, 5xx, dropped connection, timeout). Waiting for a kernel or a
dataset version to change state is a different thing; see ``wait_for_*``.

Each policy is exponential backoff with jitter (each wait is drawn between
half and all of ``initial * 2**(n-1)``, capped at ``max_seconds``), waits at
least as long as a 429's ``Retry-After``, stops after ``max_attempts`` or
before the total time would pass ``total_seconds``, logs every failed attempt
once at WARNING as ``attempt n/max``, and re-raises the typed error.

What is retried depends on the kind of call:

- ``read`` (status, listings, downloads), ``create`` (a new dataset or
  version) and ``upload``: rate limits and unavailability.
- ``push``: rate limits only. A push that timed out or got a 5xx may still
  have started a session, so it is never repeated blindly; the caller checks
  the kernel's latest version first.

A ``create`` that may have reached the server is followed by a lookup of the
version before the next attempt; ``datasets.publish_folder`` does that.

``policy_scope(policy)`` makes one policy (a chain's ``retry`` in relay.toml)
the default of every call in a block, however deep, that passes none; the
kind still decides which errors are retried.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import tenacity
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kaggle_relay.errors import KaggleApiError, KaggleRateLimitError, KaggleUnavailableError
from kaggle_relay.relay import client

log = logging.getLogger(__name__)

T = TypeVar("T")
Kind = Literal["read", "create", "upload", "push"]


class RetryPolicy(BaseModel):
    """Timing of retries: how many attempts, how long between them, how long in all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=6, ge=1, le=100, description="attempts in all, the first one included")
    initial_seconds: float = Field(default=2.0, gt=0, description="wait after the first failure, in seconds")
    max_seconds: float = Field(default=120.0, gt=0, description="longest single wait, in seconds")
    total_seconds: float = Field(default=900.0, gt=0, description="no attempt starts after this many seconds")

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> RetryPolicy:
        if self.max_seconds < self.initial_seconds:
            raise ValueError(
                f"max_seconds ({self.max_seconds}) must not be smaller than initial_seconds ({self.initial_seconds})"
            )
        return self


#: Defaults per kind, sized for cron ticks a few minutes apart on multi-hour runs.
DEFAULT_POLICIES: dict[Kind, RetryPolicy] = {
    "read": RetryPolicy(max_attempts=6, initial_seconds=2.0, max_seconds=60.0, total_seconds=300.0),
    "create": RetryPolicy(max_attempts=6, initial_seconds=5.0, max_seconds=120.0, total_seconds=900.0),
    "upload": RetryPolicy(max_attempts=4, initial_seconds=5.0, max_seconds=120.0, total_seconds=1800.0),
    "push": RetryPolicy(max_attempts=4, initial_seconds=5.0, max_seconds=120.0, total_seconds=600.0),
}

_RETRIED: dict[Kind, tuple[type[KaggleApiError], ...]] = {
    "read": (KaggleRateLimitError, KaggleUnavailableError),
    "create": (KaggleRateLimitError, KaggleUnavailableError),
    "upload": (KaggleRateLimitError, KaggleUnavailableError),
    "push": (KaggleRateLimitError,),
}


_SCOPED_POLICY: contextvars.ContextVar[RetryPolicy | None] = contextvars.ContextVar("retry_policy", default=None)


@contextlib.contextmanager
def policy_scope(policy: RetryPolicy | None) -> Iterator[None]:
    """Use ``policy`` for every call in the block that passes no policy; None keeps the defaults per kind."""
    token = _SCOPED_POLICY.set(policy)
    try:
        yield
    finally:
        _SCOPED_POLICY.reset(token)


class _Backoff(tenacity.wait.wait_base):
    """Exponential backoff with jitter that never waits less than a 429's Retry-After."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        ceiling = min(self.policy.max_seconds, self.policy.initial_seconds * 2 ** (retry_state.attempt_number - 1))
        delay = self.rng.uniform(ceiling / 2, ceiling)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, KaggleRateLimitError) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay


def retrying(
    kind: Kind,
    *,
    policy: RetryPolicy | None = None,
    what: str = "",
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> tenacity.Retrying:
    """Return the tenacity ``Retrying`` for one kind of call.

    Use it as ``retrying("read")(fn, ...)`` or ``for attempt in retrying(...)``.
    ``sleep`` and ``rng`` are injectable so tests do not wait.
    """
    chosen = policy or _SCOPED_POLICY.get() or DEFAULT_POLICIES[kind]
    label = what or f"{kind} call"
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_RETRIED[kind]),
        wait=_Backoff(chosen, rng or random.Random()),
        stop=tenacity.stop_after_attempt(chosen.max_attempts) | tenacity.stop_before_delay(chosen.total_seconds),
        before_sleep=lambda state: _log_retry(state, label, chosen),
        retry_error_callback=lambda state: _give_up(state, label, chosen),
        sleep=sleep,
        reraise=True,
    )


def run(
    kind: Kind,
    what: str,
    fn: Callable[..., T],
    *args: Any,
    resource: str = "",
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    forbidden_means_processing: bool = False,
    **kwargs: Any,
) -> T:
    """Run a KaggleApi method through ``client.call`` under the policy for ``kind``."""
    attempts = retrying(kind, policy=policy, what=f"{what} {resource}".strip(), sleep=sleep)
    result: T = attempts(
        client.call,
        what,
        fn,
        *args,
        resource=resource,
        forbidden_means_processing=forbidden_means_processing,
        **kwargs,
    )
    return result


def _log_retry(state: tenacity.RetryCallState, what: str, policy: RetryPolicy) -> None:
    error = state.outcome.exception() if state.outcome else None
    delay = state.upcoming_sleep
    log.warning(
        "%s failed (attempt %d/%d): %s; retrying in %.1f s",
        what,
        state.attempt_number,
        policy.max_attempts,
        error,
        delay,
    )


def _give_up(state: tenacity.RetryCallState, what: str, policy: RetryPolicy) -> Any:
    assert state.outcome is not None
    error = state.outcome.exception()
    elapsed = state.seconds_since_start or 0.0
    log.warning(
        "%s failed (attempt %d/%d): %s; giving up after %.0f s",
        what,
        state.attempt_number,
        policy.max_attempts,
        error,
        elapsed,
    )
    if error is None:
        return state.outcome.result()
    error.add_note(f"gave up after {state.attempt_number} attempts in {elapsed:.0f} s")
    raise error
