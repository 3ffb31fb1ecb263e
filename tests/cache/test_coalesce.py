"""Request coalescing: identical in-flight GETs share one handler run, without storing."""

from __future__ import annotations

import asyncio

import pytest

from bastion._clock import ManualClock
from bastion.cache import CacheBackend
from bastion.events import RequestCoalesced
from tests.cache.conftest import Recorder
from tests.cache.responses import CountedApp, client_for

pytestmark = pytest.mark.anyio


async def until_running(counted: CountedApp) -> None:
    """Wait until the handler started, then let the other requests reach the cache."""
    await counted.started.wait()
    for _ in range(50):
        await asyncio.sleep(0)


async def test_identical_concurrent_requests_share_one_run(
    memory_backend: CacheBackend, manual_clock: ManualClock, recorder: Recorder
) -> None:
    """100 concurrent ``GET /search?q=x``: one run; every response identical."""
    counted = CountedApp()
    counted.gate = asyncio.Event()
    async with client_for(counted, memory_backend, manual_clock, hooks=recorder.hooks) as client:
        requests = [asyncio.create_task(client.get("/search?q=x")) for _ in range(100)]
        await until_running(counted)
        counted.gate.set()
        responses = await asyncio.gather(*requests)

    assert 1 == counted.runs["search"]
    assert {b'{"q":"x","version":1}'} == {r.content for r in responses}
    assert 99 == len(recorder.of(RequestCoalesced))
    assert {"bastion; fwd=miss", "bastion; fwd=miss; collapsed"} == {
        r.headers["cache-status"] for r in responses
    }


async def test_nothing_is_kept_after_the_run(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """Coalescing is not caching: the next request runs the handler again."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/search?q=x")
        counted.version = 2
        response = await client.get("/search?q=x")

    assert (2, 2) == (counted.runs["search"], response.json()["version"])


async def test_different_requests_are_not_coalesced(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """Another query, or other credentials, is another key."""
    counted = CountedApp()
    counted.gate = asyncio.Event()
    async with client_for(counted, memory_backend, manual_clock) as client:
        requests = [
            asyncio.create_task(client.get("/search?q=x")),
            asyncio.create_task(client.get("/search?q=y")),
            asyncio.create_task(client.get("/search?q=x", headers={"authorization": "Bearer B"})),
        ]
        await until_running(counted)
        counted.gate.set()
        await asyncio.gather(*requests)

    assert 3 == counted.runs["search"]


async def test_waiters_run_their_own_when_the_leader_fails(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """A leader that raises shares nothing: each waiter runs the handler itself."""
    counted = CountedApp()
    counted.gate = asyncio.Event()
    async with client_for(counted, memory_backend, manual_clock) as client:
        leader = asyncio.create_task(client.get("/albums/5"))
        await until_running(counted)
        waiters = [asyncio.create_task(client.get("/albums/5")) for _ in range(3)]
        for _ in range(50):
            await asyncio.sleep(0)
        counted.fail = RuntimeError("boom")
        counted.gate.set()
        with pytest.raises(RuntimeError):
            await leader
        results = await asyncio.gather(*waiters, return_exceptions=True)

    assert 4 == counted.runs["album:5"]
    assert 3 == sum(isinstance(r, RuntimeError) for r in results)
