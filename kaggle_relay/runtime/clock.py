"""The session clock, which decides when a training loop must save and stop before Kaggle ends the session.

Kaggle stops an interactive or batch session after 12 hours, or 9 hours when
the accelerator is a TPU. The deadline is resolved in this order:

1. a ``deadline`` argument (Unix time in seconds), then a ``limit`` argument
   (seconds from the process start);
2. ``KAGGLE_RELAY_SESSION_DEADLINE`` (Unix time; the emulator sets it);
3. ``KAGGLE_RELAY_SESSION_LIMIT`` (seconds from the process start);
4. Kaggle's default for the accelerator in ``KAGGLE_RELAY_ACCELERATOR``.

``should_stop()`` turns true when the time left is smaller than the safety
margin plus the longest save and the last epoch measured so far, or after a
SIGTERM, so the loop still has time to write its last checkpoint::

    clock = SessionClock()
    with clock.handle_sigterm():
        for epoch in range(start_epoch, epochs):
            with clock.measure("epoch"):
                train_one_epoch()
            with clock.measure("save"):
                save_checkpoint(...)
            if clock.should_stop():
                break
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from kaggle_relay.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 12 * 3600.0
TPU_LIMIT = 9 * 3600.0
DEADLINE_ENV = "KAGGLE_RELAY_SESSION_DEADLINE"
LIMIT_ENV = "KAGGLE_RELAY_SESSION_LIMIT"
ACCELERATOR_ENV = "KAGGLE_RELAY_ACCELERATOR"

# The default margin is 3 % of the session (about 22 minutes of 12 hours) and at least
# 5 minutes. The floor is capped at 10 % of the session so that short emulator sessions still train.
MARGIN_FRACTION = 0.03
MARGIN_FLOOR = 300.0
MARGIN_FLOOR_SHARE = 0.10


def default_limit(accelerator: str | None = None) -> float:
    """Return Kaggle's session length in seconds for a ``machine_shape`` name."""
    name = accelerator if accelerator is not None else os.environ.get(ACCELERATOR_ENV, "")
    return TPU_LIMIT if name.lower().startswith("tpu") else DEFAULT_LIMIT


def default_margin(limit: float) -> float:
    """Return the safety margin for a session of ``limit`` seconds."""
    floor = min(MARGIN_FLOOR, MARGIN_FLOOR_SHARE * limit)
    return max(MARGIN_FRACTION * limit, floor)


def process_start_time() -> float:
    """Return the Unix time this process started, or now when /proc is not available."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            # The command name (field 2) may contain spaces, so count fields after its ')'.
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
        ticks = int(fields[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a number of seconds",
            field=name,
            hint=f"unset {name} or set a number",
        ) from None


class SessionClock:
    """The time left in this Kaggle session, and whether the loop should save and stop now."""

    def __init__(
        self,
        *,
        deadline: float | None = None,
        limit: float | None = None,
        margin: float | None = None,
        accelerator: str | None = None,
        start: float | None = None,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        self._now = time_source
        if start is None:
            start = process_start_time() if time_source is time.time else time_source()
        self.start = start
        self.deadline, self.source = self._resolve_deadline(deadline, limit, accelerator)
        self.limit = self.deadline - self.start
        self.margin = default_margin(self.limit) if margin is None else float(margin)
        self.durations: dict[str, float] = {}
        self.terminated = False
        self._previous_handler: Any = None
        self._installed = False
        log.debug(
            "session deadline %.0f (%s), %.0f s after start, margin %.0f s",
            self.deadline,
            self.source,
            self.limit,
            self.margin,
        )

    def _resolve_deadline(
        self, deadline: float | None, limit: float | None, accelerator: str | None
    ) -> tuple[float, str]:
        if deadline is not None:
            return float(deadline), "deadline argument"
        if limit is not None:
            return self.start + float(limit), "limit argument"
        env_deadline = _env_float(DEADLINE_ENV)
        if env_deadline is not None:
            return env_deadline, DEADLINE_ENV
        env_limit = _env_float(LIMIT_ENV)
        if env_limit is not None:
            return self.start + env_limit, LIMIT_ENV
        return self.start + default_limit(accelerator), "Kaggle default"

    def remaining(self) -> float:
        """Return the seconds left before the session is killed (negative once past)."""
        return self.deadline - self._now()

    def elapsed(self) -> float:
        return self._now() - self.start

    def reserve(self) -> float:
        """Return the seconds kept free for one more epoch and its save, as measured so far."""
        return self.durations.get("epoch", 0.0) + self.durations.get("save", 0.0)

    def should_stop(self) -> bool:
        """Tell whether the loop must save and exit now: SIGTERM, or too little time left."""
        if self.terminated:
            return True
        return self.remaining() <= self.margin + self.reserve()

    def note_duration(self, kind: str, seconds: float) -> None:
        """Record how long one ``kind`` of work took ("epoch", "save").

        Saves keep their longest duration, because a save must always fit.
        Any other kind keeps its last duration.
        """
        if kind == "save":
            seconds = max(seconds, self.durations.get(kind, 0.0))
        self.durations[kind] = seconds

    @contextlib.contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        """Time the block and record it with ``note_duration``."""
        began = self._now()
        try:
            yield
        finally:
            self.note_duration(kind, self._now() - began)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM received: the loop should save its checkpoint and exit")
        self.terminated = True

    def install_sigterm_handler(self) -> bool:
        """Make SIGTERM set ``should_stop()`` instead of killing the process.

        Python allows signal handlers only in the main thread; elsewhere this
        logs a warning, installs nothing and returns False.
        """
        if self._installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM keeps its default action")
            return False
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        return True

    def restore_sigterm_handler(self) -> None:
        """Put back the SIGTERM handler that was active before ``install_sigterm_handler``."""
        if not self._installed:
            return
        previous = self._previous_handler if self._previous_handler is not None else signal.SIG_DFL
        signal.signal(signal.SIGTERM, previous)
        self._installed = False

    @contextlib.contextmanager
    def handle_sigterm(self) -> Iterator[SessionClock]:
        """Install the SIGTERM handler for the block and restore the previous one after it."""
        self.install_sigterm_handler()
        try:
            yield self
        finally:
            self.restore_sigterm_handler()

    def __repr__(self) -> str:
        return (
            f"SessionClock(remaining={self.remaining():.0f}s, margin={self.margin:.0f}s, "
            f"reserve={self.reserve():.0f}s, source={self.source!r}, terminated={self.terminated})"
        )
