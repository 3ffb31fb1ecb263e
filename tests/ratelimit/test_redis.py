"""The Redis backend: one round trip per decision, scripts that survive a flush, expiring keys."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from bastion._clock import ManualClock
from bastion.ratelimit import Check, Limit, RateLimiter
from bastion.stores.redis import RedisStore

pytestmark = pytest.mark.anyio


class RedisServer(Protocol):
    """What these tests use of conftest's ``RedisServer``."""

    @property
    def url(self) -> str: ...


@pytest.fixture
async def admin(redis_url: str, anyio_backend: str) -> AsyncIterator[Redis]:
    """A plain client on the shared server, for looking behind the limiter's back."""
    async with Redis.from_url(redis_url) as client:
        yield client


async def command_calls(client: Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, without the inspection itself."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(values["calls"])
        for name, values in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config|resetstat")
    }


async def test_a_decision_over_several_limits_is_one_evalsha(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three quotas in two limits: each decision sends one command, EVALSHA, and nothing else.

    Counted on both sides: the client's writes to its socket, and the server's command
    statistics, where the only command a client sent is EVALSHA (the rest ran in the script).
    """
    server = redis_server_factory()
    sent: list[int] = []
    original = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    async with RedisStore.from_url(server.url) as store, Redis.from_url(server.url) as admin:
        limiter = RateLimiter(store)
        checks = [
            Check(Limit("100/second; 1000/hour", name="api"), "ip:203.0.113.7", "GET /items"),
            Check(Limit("50/minute", name="global", per_route=False), "ip:203.0.113.7"),
        ]
        await limiter.decide(checks)  # loads the script: NOSCRIPT, SCRIPT LOAD, EVALSHA
        await admin.config_resetstat()
        monkeypatch.setattr(Connection, "send_packed_command", counting)
        for _ in range(25):
            await limiter.decide(checks)
        monkeypatch.undo()
        calls = await command_calls(admin)
    assert (25, 25) == (len(sent), calls.pop("evalsha"))
    # Inside the script: the server clock once, three reads, and three writes per decision.
    assert {"time": 25, "hmget": 75, "hset": 75, "pexpire": 75} == calls


async def test_decisions_survive_a_script_flush(redis_store: RedisStore, admin: Redis) -> None:
    """After SCRIPT FLUSH (a restart, a failover), the next decision reloads the script."""
    limiter = RateLimiter(redis_store)
    limit = Limit("5/minute", algorithm="gcra")
    first = await limiter.hit(limit, "alice")
    await admin.script_flush()
    second = await limiter.hit(limit, "alice")
    assert [4, 3] == [first.quotas[0].remaining, second.quotas[0].remaining]


async def test_keys_live_under_the_prefix_and_namespace_and_all_expire(
    redis_store: RedisStore, admin: Redis, clock: ManualClock
) -> None:
    """Keys: {prefix}:ratelimit:{partition}:name|scope:algorithm:window, each with a TTL."""
    limiter = RateLimiter(redis_store, clock=clock)
    await limiter.decide(
        [
            Check(Limit("10/second; 100/hour", name="api"), "ip:203.0.113.7", "GET /items/{id}"),
            Check(Limit("3/minute", name="bucket", algorithm="gcra"), "ip:203.0.113.7", "GET /x"),
            Check(Limit("3/day", name="daily", algorithm="fixed_window"), "ip:203.0.113.7"),
        ]
    )
    prefix = redis_store._keys  # the fixture's unique prefix, for the assertion only
    found = sorted([key.decode() async for key in admin.scan_iter(match=f"{prefix}*")])
    tags = "{ip:203.0.113.7}"
    assert [
        f"{prefix}ratelimit:{tags}:api|GET /items/{{id}}:2:1",
        f"{prefix}ratelimit:{tags}:api|GET /items/{{id}}:2:3600",
        f"{prefix}ratelimit:{tags}:bucket|GET /x:3:60",
        f"{prefix}ratelimit:{tags}:daily|:1:86400",
    ] == found
    ttls = [await admin.pttl(key) for key in found]
    # Sliding windows keep two windows; a bucket lives until it is full again (one unit: 20 s);
    # a fixed window until it ends.
    expected = [2000, 7_200_000, 20_000, 86_400_000]
    assert [True] * 4 == [0 <= want - ttl < 500 for want, ttl in zip(expected, ttls, strict=True)]


async def test_without_a_clock_windows_follow_the_redis_servers_time(
    redis_store: RedisStore, admin: Redis
) -> None:
    """No injected clock: the script reads TIME, so every host agrees on window edges."""
    limiter = RateLimiter(redis_store)
    seconds, micros = await admin.time()
    decision = await limiter.hit(Limit("5/minute", algorithm="fixed_window"), "alice")
    expected = 60 - ((seconds + micros / 1_000_000) % 60)
    assert 0 <= expected - decision.quotas[0].reset_s < 0.5


async def test_an_injected_clock_replaces_the_server_time(redis_store: RedisStore) -> None:
    """With a clock given, its time() decides: a window far in the past is honoured."""
    clock = ManualClock(0.0, wall_start=999_999_990.0)  # 30 s into a minute
    limiter = RateLimiter(redis_store, clock=clock)
    decision = await limiter.hit(Limit("5/minute", algorithm="fixed_window"), "alice")
    assert 30.0 == decision.quotas[0].reset_s


async def test_the_system_clock_means_the_server_time(redis_store: RedisStore) -> None:
    """Passing the system clock (what Bastion does by default) keeps the server's TIME."""
    from bastion._clock import SYSTEM_CLOCK
    from bastion.ratelimit._redis import RedisBackend

    limiter = RateLimiter(redis_store, clock=SYSTEM_CLOCK)
    assert isinstance(limiter.backend, RedisBackend)
    assert None is limiter.backend._clock


async def test_views_of_one_store_share_counters_and_prefixes_isolate_apps(
    redis_url: str,
) -> None:
    """Two limiters on one prefix share budgets; another prefix does not see them."""
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    async with (
        RedisStore.from_url(redis_url, prefix=prefix) as first,
        RedisStore.from_url(redis_url, prefix=prefix) as second,
        RedisStore.from_url(redis_url, prefix=prefix + "-other") as other,
    ):
        limit = Limit("1/hour", algorithm="gcra")
        try:
            results = [
                (await RateLimiter(store).hit(limit, "alice")).allowed
                for store in (first, second, other)
            ]
        finally:
            for store in (first, other):
                async for key in store.client.scan_iter(match=f"{store._keys}*"):
                    await store.client.unlink(key)
    assert [True, False, True] == results


async def test_a_redis_decision_is_fast_enough_to_count_as_one_round_trip(
    redis_store: RedisStore,
) -> None:
    """Sanity bound, not a benchmark: 200 sequential decisions on localhost take under 2 s."""
    limiter = RateLimiter(redis_store)
    limit = Limit("10/second; 1000/hour", name="api")
    started = time.perf_counter()
    for _ in range(200):
        await limiter.hit(limit, "alice", cost=0)
    assert time.perf_counter() - started < 2.0
