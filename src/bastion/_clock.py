"""Injectable time.

Every time-based component takes a ``Clock`` so tests advance time instead of sleeping.
``monotonic`` measures intervals and deadlines; ``time`` is wall-clock seconds for timestamps
shown to people.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock", "SYSTEM_CLOCK"]


@runtime_checkable
class Clock(Protocol):
    """A source of time. Implementations must be cheap: they are called on hot paths."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...


class SystemClock:
    """The real clocks of the process: ``time.monotonic`` and ``time.time`` themselves.

    They are bound as static methods rather than wrapped, so reading the clock on a hot path
    costs one C call, not a Python frame as well.
    """

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told to: the test double for every time-based component.

    Args:
        start: initial value of both clocks, in seconds.
    """

    __slots__ = ("_now", "_wall_offset")

    def __init__(self, start: float = 1_000.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def monotonic(self) -> float:
        """Return the current manual time."""
        return self._now

    def time(self) -> float:
        """Return the manual wall-clock time, which advances with ``monotonic``."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now += seconds
