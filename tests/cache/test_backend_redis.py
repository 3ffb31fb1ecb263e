"""What only the Redis cache backend promises: one round trip, key layout, TTLs, outages."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.crc import key_slot

from bastion.cache import RedisCacheBackend, backend_for_store
from bastion.exceptions import StoreUnavailable
from bastion.stores import MemoryStore
from bastion.stores.redis import RedisStore
from tests.cache.conftest import Outage

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class CountingConnection(Connection):
    """A redis-py connection that counts the requests it sends (each one a round trip)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
async def counted(redis_url: str) -> AsyncIterator[RedisCacheBackend]:
    """A Redis backend whose client counts its round trips in ``CountingConnection.sent``."""
    pool = BlockingConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = Redis.from_pool(pool)
    store = RedisStore(client, prefix=f"bastion-test-{uuid.uuid4().hex}")
    backend = RedisCacheBackend(store.with_namespace("cache"))
    try:
        yield backend
    finally:
        await client.delete(*[key async for key in client.scan_iter(f"{store.key_prefix}*")])
        await client.aclose()


async def test_a_tagged_hit_is_one_round_trip(counted: RedisCacheBackend) -> None:
    """A lookup reads the entry and checks three tags' versions in a single request."""
    await counted.set("k", b"v", ttl_s=60, tags=["a", "b", "c"])
    await counted.purge("b")
    await counted.set("k", b"v", ttl_s=60, tags=["a", "b", "c"])
    await counted.get("k")  # loads the script on first use (NOSCRIPT, then EVAL)
    CountingConnection.sent = 0
    value = await counted.get("k")
    assert (b"v", 1) == (value, CountingConnection.sent)


async def test_a_miss_and_a_write_are_one_round_trip_each(counted: RedisCacheBackend) -> None:
    """set and a miss each cost one request, purge of several tags too."""
    await counted.set("warm", b"v", ttl_s=60, tags=["a"])
    await counted.get("warm")
    await counted.purge("a")
    sent = []
    for operation in (
        counted.get("missing"),
        counted.set("k", b"v", ttl_s=60, tags=["a", "b"]),
        counted.purge("a", "b", "c"),
    ):
        CountingConnection.sent = 0
        await operation
        sent.append(CountingConnection.sent)
    assert [1, 1, 1] == sent


async def test_keys_share_one_cluster_slot(redis_backend: RedisCacheBackend) -> None:
    """Entry, tag, counter and lock keys carry one hash tag, so scripts stay in one slot."""
    await redis_backend.set("k", b"v", ttl_s=60, tags=["t"])
    await redis_backend.purge("t")
    await redis_backend.acquire("k", "token", ttl_s=10)
    client = redis_backend.store.client
    keys = [key.decode() async for key in client.scan_iter(f"{redis_backend.key_prefix}*")]
    slots = {key_slot(key.encode()) for key in keys}
    assert (4, 1) == (len(keys), len(slots))


async def test_entries_and_tags_carry_ttls(redis_backend: RedisCacheBackend) -> None:
    """The entry expires with its TTL; a purged tag's version outlives max_ttl_s."""
    await redis_backend.set("k", b"v", ttl_s=30, tags=["t"])
    await redis_backend.purge("t")
    client = redis_backend.store.client
    entry_ms = await client.pttl(f"{redis_backend.key_prefix}e:k")
    tag_ms = await client.pttl(f"{redis_backend.key_prefix}t:t")
    assert 29_000 < entry_ms <= 30_000
    assert redis_backend.max_ttl_s * 1000 < tag_ms


async def test_ttl_is_capped_at_max_ttl(redis_store: RedisStore) -> None:
    """A TTL longer than max_ttl_s is shortened to it."""
    backend = RedisCacheBackend(redis_store.with_namespace("cache"), max_ttl_s=5)
    await backend.set("k", b"v", ttl_s=3600)
    assert 0 < await backend.store.client.pttl(f"{backend.key_prefix}e:k") <= 5_000


async def test_lock_expires_by_itself(redis_backend: RedisCacheBackend) -> None:
    """A lock carries its TTL, so a holder that dies frees it."""
    await redis_backend.acquire("k", "dead", ttl_s=7)
    remaining = await redis_backend.store.client.pttl(f"{redis_backend.key_prefix}l:k")
    assert 6_000 < remaining <= 7_000


async def test_large_values_are_stored_compressed(redis_backend: RedisCacheBackend) -> None:
    """A large compressible value takes a fraction of its size in Redis."""
    value = b"album " * 50_000
    await redis_backend.set("k", value, ttl_s=60)
    stored = await redis_backend.store.client.hget(f"{redis_backend.key_prefix}e:k", "d")
    assert value == await redis_backend.get("k")
    assert stored is not None
    assert len(stored) * 20 < len(value)


async def test_incompressible_values_are_stored_as_they_are(
    redis_backend: RedisCacheBackend,
) -> None:
    """Compression that would not save space is skipped: one marker byte is the only cost."""
    value = os.urandom(10_000)
    await redis_backend.set("k", value, ttl_s=60)
    stored = await redis_backend.store.client.hget(f"{redis_backend.key_prefix}e:k", "d")
    assert b"\x00" + value == stored


async def test_backend_for_store_picks_by_store(redis_store: RedisStore) -> None:
    """A RedisStore gives a Redis backend under its cache namespace; memory gives memory."""
    redis_backend = backend_for_store(redis_store)
    memory_backend = backend_for_store(MemoryStore())
    assert ("redis", "memory") == (redis_backend.name, memory_backend.name)
    assert isinstance(redis_backend, RedisCacheBackend)
    assert redis_backend.key_prefix.startswith(f"{redis_store.key_prefix}cache:")


async def test_unreachable_redis_raises_store_unavailable(
    dead_backend: RedisCacheBackend,
) -> None:
    """Every operation on a Redis nobody listens on raises StoreUnavailable, never redis errors."""
    backend = dead_backend
    operations: list[Callable[[], Any]] = [
        lambda: backend.get("k"),
        lambda: backend.set("k", b"v", ttl_s=1),
        lambda: backend.delete("k"),
        lambda: backend.purge("t"),
        lambda: backend.tag_snapshot(["t"]),
        lambda: backend.acquire("k", "x", ttl_s=1),
        lambda: backend.release("k", "x"),
    ]
    for operation in operations:
        with pytest.raises(StoreUnavailable):
            await operation()


async def test_outage_fails_fast_then_heals(outage: Outage) -> None:
    """While Redis is down the gate fails fast; once it is back, the backend works again."""
    backend = outage.backend
    await backend.set("k", b"v", ttl_s=60)
    outage.server.kill()
    with pytest.raises(StoreUnavailable):
        await backend.get("k")
    state_during = outage.gate.state
    outage.server.start()
    outage.clock.advance(1.0)
    await backend.set("k", b"again", ttl_s=60)
    assert ("open", "closed", b"again") == (
        state_during,
        outage.gate.state,
        await backend.get("k"),
    )
