"""One worker process of the two-process ``@cached`` tests (run with ``python -m``, not collected).

Configured by the environment: ``REDIS_URL``, ``PREFIX`` (the store's key prefix), ``MODE``.

``MODE=flight``: prints ``ready``, waits for a line on standard input, then makes ``CALLS``
concurrent calls of a cached function for one cold key. The function counts its runs in Redis
(``<PREFIX>:runs``) and takes 300 ms. Prints one JSON line: the results.

``MODE=local``: a cached reader with a local level (``local_ttl=60``) of the row stored in Redis
under ``<PREFIX>:row``. Prints ``ready`` once its invalidation subscription is up; then, for
each line ``read`` on standard input, prints one JSON line ``[value, level]`` where level is
where the hit came from (``null`` on a miss).
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from bastion.cache import RedisCacheBackend, cached
from bastion.events import FunctionCacheHit, Hooks
from bastion.stores.redis import RedisStore
from tests.workers import redis_barrier


async def flight(store: RedisStore, backend: RedisCacheBackend, prefix: str) -> None:
    """Many concurrent calls for one cold key, after the parent says go."""

    @cached(ttl=60, backend=backend, name="worker.slow", wait_s=30, lock_ttl_s=30)
    async def slow(album_id: int) -> dict[str, int]:
        await store.client.incr(f"{prefix}:runs")
        await asyncio.sleep(0.3)
        return {"album": album_id, "pid": os.getpid()}

    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await redis_barrier(store.client, f"{prefix}:barrier")
    calls = int(os.environ["CALLS"])
    results = await asyncio.gather(*(slow(7) for _ in range(calls)))
    print(orjson.dumps(results).decode(), flush=True)


async def local(store: RedisStore, backend: RedisCacheBackend, prefix: str) -> None:
    """Read a row through a two-level cache whenever the parent asks."""
    hooks = Hooks()
    levels: list[str] = []
    hooks.subscribe(FunctionCacheHit, lambda event: levels.append(event.level))

    @cached(ttl=60, local_ttl=60, backend=backend, name="rows.read", tags=["rows"], hooks=hooks)
    async def read(row_id: int) -> str:
        value = await store.client.get(f"{prefix}:row")
        return value.decode() if isinstance(value, bytes) else ""

    await read(0)  # starts the subscription (row 0 is never read again)
    while not backend.subscribed:  # noqa: ASYNC110 - set by the listener task
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    while (await asyncio.to_thread(sys.stdin.readline)).strip() == "read":
        levels.clear()
        value = await read(1)
        print(orjson.dumps([value, levels[0] if levels else None]).decode(), flush=True)


async def main() -> None:
    """Run the mode the environment names."""
    prefix = os.environ["PREFIX"]
    store = RedisStore.from_url(
        os.environ["REDIS_URL"], prefix=prefix, pool_timeout_s=10, socket_timeout_s=10
    )
    backend = RedisCacheBackend(store.with_namespace("cache"))
    try:
        if os.environ["MODE"] == "flight":
            await flight(store, backend, prefix)
        else:
            await local(store, backend, prefix)
    finally:
        await backend.aclose()
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
