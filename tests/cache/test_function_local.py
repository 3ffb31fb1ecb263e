"""The local level of ``@cached``: in front of Redis, kept coherent by pub/sub invalidations.

Two ``RedisCacheBackend`` objects on separate connections stand in for two processes here;
``test_function_processes.py`` checks the same with real processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from bastion.cache import (
    CacheBackend,
    CachedFunction,
    Invalidation,
    RedisCacheBackend,
    cached,
    purge,
)
from bastion.events import FunctionCacheHit
from bastion.stores.redis import RedisStore
from tests.cache.conftest import Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

T = TypeVar("T")
Reader = CachedFunction[[int], str]


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisCacheBackend, RedisCacheBackend]]:
    """Two backends on one Redis prefix with their own connections: two 'processes'."""
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
    backends = [RedisCacheBackend(store.with_namespace("cache")) for store in stores]
    try:
        yield backends[0], backends[1]
    finally:
        for backend in backends:
            await backend.aclose()
        client = stores[0].client
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        for store in stores:
            await store.aclose()


async def until(check: Callable[[], Awaitable[T]], expected: T, timeout_s: float = 3.0) -> T:
    """Poll ``check`` until it returns ``expected`` or the timeout passes; return the last value."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value == expected or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.01)


async def subscribed(backend: RedisCacheBackend) -> None:
    """Wait until the backend receives invalidations."""
    for _ in range(300):
        if backend.subscribed:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the invalidation subscription did not come up")


def make_source() -> tuple[dict[int, str], Callable[[CacheBackend, Recorder], Reader]]:
    """Shared 'database' rows, and a factory of the cached reader bound to one backend."""
    rows = {1: "v1", 2: "w1"}

    def reader(backend: CacheBackend, recorder: Recorder) -> Reader:
        @cached(
            ttl=60,
            local_ttl=60,
            backend=backend,
            tags=["row:{row_id}"],
            name="rows.read",
            hooks=recorder.hooks,
        )
        async def read(row_id: int) -> str:
            return rows[row_id]

        return read

    return rows, reader


async def test_local_hits_skip_redis(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """A value read from Redis is kept in the process: the next call does not go to Redis."""
    _, reader = make_source()
    read_a, read_b = reader(pair[0], recorder), reader(pair[1], recorder)
    await read_b(2)  # subscribes
    await subscribed(pair[1])
    await read_a(1)  # stored in Redis by the other 'process'
    recorder.events.clear()
    await read_b(1)
    await read_b(1)
    levels = [event.level for event in recorder.of(FunctionCacheHit)]  # type: ignore[attr-defined]
    assert ["redis", "local"] == levels


async def test_a_value_produced_here_is_kept_here(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """A miss stores in Redis and in the local level: the next call is a local hit."""
    _, reader = make_source()
    read = reader(pair[0], recorder)
    await read(2)  # subscribes
    await subscribed(pair[0])
    recorder.events.clear()
    await read(1)
    await read(1)
    levels = [event.level for event in recorder.of(FunctionCacheHit)]  # type: ignore[attr-defined]
    assert ["local"] == levels


async def test_invalidate_in_one_process_reaches_the_other(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """A's invalidate makes B drop its local copy: B sees the new row, not the stale one."""
    rows, reader = make_source()
    read_a, read_b = reader(pair[0], recorder), reader(pair[1], recorder)
    await read_a(1)
    await read_b(1)
    await subscribed(pair[1])
    assert "v1" == await read_b(1)  # now in B's local level
    rows[1] = "v2"
    await read_a.invalidate(1)
    assert "v2" == await until(lambda: read_b(1), "v2")


async def test_purge_in_one_process_reaches_the_other(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """A tag purge made through A's backend drops B's local copies of that tag only."""
    rows, reader = make_source()
    read_b = reader(pair[1], recorder)
    await read_b(1)
    await subscribed(pair[1])
    await read_b(1)
    await read_b(2)
    rows[1], rows[2] = "v2", "w2"
    await purge("row:1", backend=pair[0])
    assert ("v2", "w1") == (await until(lambda: read_b(1), "v2"), await read_b(2))


async def test_local_purge_is_immediate_in_the_same_process(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """A purge through this process's backend clears its local level before purge() returns."""
    rows, reader = make_source()
    read = reader(pair[0], recorder)
    await read(1)
    await subscribed(pair[0])
    await read(1)
    rows[1] = "v2"
    await purge("row:1", backend=pair[0])
    assert "v2" == await read(1)


async def test_a_write_in_one_process_replaces_the_others_copy(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """Every set is announced: a value written through A replaces the copy held by B."""
    _, reader = make_source()
    read_a, read_b = reader(pair[0], recorder), reader(pair[1], recorder)
    await read_b(1)
    await subscribed(pair[1])
    assert "v1" == await read_b(1)  # held locally by B from now on
    await pair[0].set(read_a.key(1), b'"v2"', ttl_s=60)
    assert "v2" == await until(lambda: read_b(1), "v2")


class PausedGets:
    """A backend whose lookups can be held after Redis answered: a slow network, on demand."""

    def __init__(self, backend: RedisCacheBackend) -> None:
        self.backend = backend
        self.resume = asyncio.Event()
        self.resume.set()
        self.answered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    async def get(self, key: str) -> bytes | None:
        value = await self.backend.get(key)
        self.answered.set()
        await self.resume.wait()
        return value


async def test_a_value_invalidated_while_in_flight_is_not_kept_locally(
    pair: tuple[RedisCacheBackend, RedisCacheBackend], recorder: Recorder
) -> None:
    """B read v1 just before A invalidated it: B's call returns v1, but B does not keep it."""
    rows, reader = make_source()
    paused = PausedGets(pair[1])
    read_a = reader(pair[0], recorder)
    read_b = reader(cast("CacheBackend", paused), recorder)
    await read_b(2)  # subscribes
    await subscribed(pair[1])
    await read_a(1)  # v1 stored in Redis
    received: list[Invalidation] = []
    pair[1].subscribe(received.append)  # called after B's own callback, for every message
    paused.resume.clear()
    paused.answered.clear()
    in_flight = asyncio.create_task(read_b(1))
    await paused.answered.wait()  # B has v1 from Redis, not yet returned
    rows[1] = "v2"
    await read_a.invalidate(1)
    expected: tuple[str, ...] = (read_a.key(1),)
    await until(lambda: _keys_received(received), expected)
    paused.resume.set()
    assert ("v1", "v2") == (await in_flight, await read_b(1))


async def _keys_received(received: list[Invalidation]) -> tuple[str, ...]:
    """The keys of the invalidations received so far."""
    return tuple(key for invalidation in received for key in invalidation.keys)


async def test_subscribers_get_everything_when_the_subscription_drops(
    pair: tuple[RedisCacheBackend, RedisCacheBackend],
) -> None:
    """Losing the pub/sub connection tells local caches to drop everything, then it comes back."""
    backend = pair[0]
    received: list[Invalidation] = []
    backend.subscribe(received.append)
    await subscribed(backend)
    await backend.store.client.client_kill_filter(_type="pubsub")
    for _ in range(300):
        if received:
            break
        await asyncio.sleep(0.01)
    await subscribed(backend)
    await backend.purge("t")
    assert [Invalidation(everything=True), Invalidation(tags=("t",))] == received[:2]


async def test_without_redis_there_is_no_local_level(recorder: Recorder) -> None:
    """In front of the memory backend, local_ttl adds nothing: hits come from memory."""
    from bastion.cache import MemoryCacheBackend

    _, reader = make_source()
    read = reader(MemoryCacheBackend(), recorder)
    await read(1)
    await read(1)
    levels = [event.level for event in recorder.of(FunctionCacheHit)]  # type: ignore[attr-defined]
    assert ["memory"] == levels
