"""What the worker processes of the multi-process tests share (imported by the workers, which
the tests start as ``python -m tests.<package>.<worker>`` from the repository root)."""

from __future__ import annotations

import asyncio
from typing import Any


async def redis_barrier(client: Any, key: str, parties: int = 2) -> None:
    """Return once ``parties`` processes reached the barrier ``key`` in Redis.

    Waking from standard input takes each process a different while; without the barrier one
    could finish its work before the other started. All leave within a millisecond.
    """
    await client.incr(key)
    while int(await client.get(key) or 0) < parties:  # noqa: ASYNC110 - other processes
        await asyncio.sleep(0.001)
