"""Fixtures for the rate-limit tests: a clock both backends agree on, limiters on each store."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.ratelimit import RateLimiter
from bastion.stores import Store


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock whose monotonic and wall times both start on a day boundary.

    Memory windows follow ``monotonic()`` and Redis windows (with an injected clock) follow
    ``time()``; starting both on a boundary makes the two backends see the same windows.
    """
    return ManualClock(864_000.0, wall_start=1_728_000_000.0)


@pytest.fixture
def limiter(store: Store, clock: ManualClock) -> RateLimiter:
    """A limiter on each store in turn (memory, then Redis), driven by ``clock``."""
    return RateLimiter(store, clock=clock)
