"""Waiting in tests for state that other tasks change (listeners, queues, Redis round trips)."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def wait_until(
    predicate: Callable[[], object], timeout_s: float = 20.0, *, interval_s: float = 0.001
) -> None:
    """Yield to the other tasks until ``predicate()`` holds; fail after a generous timeout.

    For state that the code under test changes on its own tasks, or that waits on a real
    server; never to let time pass (tests advance an injected clock for that).
    """
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state that the code under test changes
            await anyio.sleep(interval_s)
