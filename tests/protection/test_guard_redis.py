"""Bans on Redis: every worker learns them at once, and an outage bans nobody wrongly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bastion._clock import ManualClock
from bastion.events import ClientBanned
from bastion.protection import Bans
from bastion.stores.redis import RedisStore
from tests.conftest import RedisServer
from tests.protection.conftest import CLIENT, client_for, guarded_app, recorder, statuses
from tests.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LEARN_TIMEOUT_S = 5.0


async def eventually(condition: Callable[[], object]) -> bool:
    """Whether ``condition()`` turns true within a few seconds (it waits on Redis, not time)."""
    try:
        await wait_until(condition, LEARN_TIMEOUT_S, interval_s=0.01)
    except TimeoutError:
        return False
    return True


async def learned(bans: Bans, key: str) -> float:
    """Seconds left of ``key``'s ban once ``bans`` has heard of it (0.0 if it never does)."""
    await eventually(lambda: bans.banned_for(key))
    return bans.banned_for(key)


async def listening(bans: Bans) -> None:
    """Wait until ``bans`` follows the channel."""
    assert await eventually(lambda: bans.listening)


@asynccontextmanager
async def following(bans: Bans) -> AsyncIterator[Bans]:
    """``bans`` started and subscribed for the block, stopped after it."""
    await bans.start()
    try:
        await listening(bans)
        yield bans
    finally:
        await bans.aclose()


async def test_a_ban_reaches_every_worker_without_a_request(redis_store: RedisStore) -> None:
    """Worker B refuses the client the moment worker A banned it: pub/sub, no B offence."""
    worker_a = Bans(redis_store, auth_failures=3)
    async with following(Bans(redis_store, auth_failures=3)) as worker_b:
        for _ in range(3):
            await worker_a.record(CLIENT, 401)
        assert 59.0 < await learned(worker_b, CLIENT) <= 60.0
        async with client_for(guarded_app(bans=worker_b)) as client:
            assert 403 == (await client.get("/ok")).status_code


async def test_a_worker_that_starts_late_loads_the_active_bans(redis_store: RedisStore) -> None:
    """start() loads the bans decided before it subscribed."""
    await _ban(Bans(redis_store, auth_failures=1), CLIENT)
    async with following(Bans(redis_store, auth_failures=1)) as late:
        assert 59.0 < await learned(late, CLIENT) <= 60.0


async def test_unban_reaches_every_worker(redis_store: RedisStore) -> None:
    """An unban on one worker lifts the ban on the others."""
    worker_a = Bans(redis_store, auth_failures=1)
    async with following(Bans(redis_store, auth_failures=1)) as worker_b:
        await _ban(worker_a, CLIENT)
        assert await learned(worker_b, CLIENT)
        assert True is await worker_a.unban(CLIENT)
        assert await eventually(lambda: not worker_b.banned_for(CLIENT))


async def test_the_store_holds_the_ban_and_its_expiry(redis_store: RedisStore) -> None:
    """The ban lives in Redis under the guard namespace, expiring with the memory period."""
    bans = Bans(redis_store, auth_failures=1, memory_s=600.0)
    await _ban(bans, CLIENT)
    key = f"{redis_store.key_prefix}guard:c:{CLIENT}"
    state = await redis_store.client.hgetall(key)
    ttl_ms = await redis_store.client.pttl(key)
    assert b"1" == state[b"n"]
    assert 599_000 < ttl_ms <= 600_000
    members = await redis_store.client.zrange(f"{redis_store.key_prefix}guard:bans", 0, -1)
    assert [CLIENT.encode()] == members


async def test_concurrent_offences_ban_exactly_once(redis_store: RedisStore) -> None:
    """60 offences at once from two workers: one ban decided, every later one sees it."""
    hooks, banned = recorder(ClientBanned)
    workers = [Bans(redis_store, auth_failures=10, hooks=hooks) for _ in range(2)]
    lengths = await asyncio.gather(*(workers[i % 2].record(CLIENT, 401) for i in range(60)))
    assert 1 == len(banned)
    assert [0.0] * 59 == sorted(lengths)[:59]
    assert 60.0 == pytest.approx(max(lengths))
    # The offences after the ban were answered "banned already": both workers know without
    # a pub/sub subscription.
    assert all(worker.banned_for(CLIENT) > 59.0 for worker in workers)


class Outage:
    """A Redis server of the test's own, and a store on it whose health gate runs on a clock."""

    def __init__(self, server: RedisServer, store: RedisStore, gate_clock: ManualClock) -> None:
        self.server = server
        self.store = store
        self.gate_clock = gate_clock


@pytest.fixture
async def outage(
    redis_server_factory: Callable[..., RedisServer], anyio_backend: str
) -> AsyncIterator[Outage]:
    """A dedicated Redis the test may kill and restart, with a store on it."""
    server = redis_server_factory()
    gate_clock = ManualClock()
    store = RedisStore.from_url(server.url, prefix=f"t-{uuid.uuid4().hex}", clock=gate_clock)
    try:
        yield Outage(server, store, gate_clock)
    finally:
        await store.aclose()


async def test_fail_open_bans_nobody_during_an_outage_and_recovers(outage: Outage) -> None:
    """Redis down: failures are answered as usual (never 403, never 500); back up: bans work."""
    app = guarded_app(bans=Bans(outage.store, auth_failures=3))
    outage.server.kill()
    assert [401] * 6 + [200] == await statuses(app, ["/login"] * 6 + ["/ok"])
    outage.server.start()
    outage.gate_clock.advance(60.0)  # past the health gate's retry delay: the next call probes
    assert [401, 401, 401, 403] == await statuses(app, ["/login"] * 3 + ["/ok"])


async def test_local_fallback_bans_in_this_process_during_an_outage(outage: Outage) -> None:
    """With local_fallback, a burst during the outage still bans, in this process."""
    app = guarded_app(bans=Bans(outage.store, auth_failures=3, on_store_error="local_fallback"))
    outage.server.kill()
    assert [401, 401, 401, 403] == await statuses(app, ["/login"] * 3 + ["/ok"])


async def test_the_listener_comes_back_after_an_outage(outage: Outage) -> None:
    """The subscription is restored by itself once Redis answers again."""
    async with following(Bans(outage.store, auth_failures=1)) as follower:
        outage.server.kill()
        assert await eventually(lambda: not follower.listening)
        outage.server.start()
        await listening(follower)
        prefix = outage.store.key_prefix.removesuffix(":")
        other = RedisStore.from_url(outage.server.url, prefix=prefix)
        try:
            await _ban(Bans(other, auth_failures=1), CLIENT)
        finally:
            await other.aclose()
        assert await learned(follower, CLIENT)


async def _ban(bans: Bans, key: str, *, status: int = 401, **options: Any) -> None:
    """Record offences until ``key`` is banned (at most 100)."""
    for _ in range(100):
        if await bans.record(key, status, **options):
            return
    raise AssertionError(f"{key} was not banned")
