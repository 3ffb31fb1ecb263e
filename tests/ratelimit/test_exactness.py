"""Exact counts under concurrency: 1000 tasks in one process, and two processes on one Redis.

A limit of 100 must admit exactly 100, never 101, however requests interleave, and the
``RateLimit`` header's remaining must count 99 down to 0 with no value repeated.

Concurrency is what these tests probe, not time: most run on a frozen clock so that no window
edge can fall inside a test. The server-time variants use GCRA at 100/hour, which has no window
edges (one unit refills every 36 s, far longer than the test).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion.ratelimit import Algorithm, Limit, RateLimiter, RateLimitMiddleware
from bastion.stores import MemoryStore, Store
from bastion.stores.redis import RedisStore
from tests.ratelimit.headers import remaining

pytestmark = pytest.mark.anyio

WORKER = "tests.ratelimit.worker"
ROOT = Path(__file__).resolve().parents[2]


async def ok(request: Request) -> Response:
    """The limited route."""
    return PlainTextResponse("ok")


async def concurrent_requests(
    limiter: RateLimiter, rate: str, algorithm: Algorithm
) -> list[httpx.Response]:
    """1000 concurrent requests through the middleware; every response."""
    app = Starlette(routes=[Route("/search", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rate=rate, algorithm=algorithm)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return list(await asyncio.gather(*(client.get("/search") for _ in range(1000))))


def admitted_remaining(responses: list[httpx.Response]) -> list[int]:
    """The RateLimit remaining of every admitted response, sorted from high to low."""
    return sorted(
        (remaining(response.headers, "default") for response in responses
         if response.status_code == 200),
        reverse=True,
    )  # fmt: skip


@pytest.fixture
async def burst_redis_store(redis_url: str, anyio_backend: str) -> AsyncIterator[RedisStore]:
    """A Redis store whose pool lets 1000 concurrent requests queue for a connection.

    With ``RedisStore``'s defaults (64 connections, 0.5 s to get one) a burst of 1000 requests
    in one process times out waiting for the pool; the gate counts that as an outage and the
    outage policy decides instead. Exactness is about the script, so the pool waits here.
    """
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    store = RedisStore.from_url(
        redis_url, prefix=prefix, pool_timeout_s=10, connect_timeout_s=10, socket_timeout_s=10
    )
    try:
        yield store
    finally:
        keys = [key async for key in store.client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await store.client.unlink(*keys)
        await store.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def burst_store(request: pytest.FixtureRequest) -> Store:
    """A fresh MemoryStore, then ``burst_redis_store``."""
    if request.param == "memory":
        return MemoryStore()
    return cast("Store", request.getfixturevalue("burst_redis_store"))


@pytest.mark.parametrize("algorithm", ["sliding_window", "fixed_window", "gcra"])
async def test_a_thousand_concurrent_tasks_on_100_per_minute_admit_exactly_100(
    burst_store: Store, algorithm: Algorithm
) -> None:
    """Memory and Redis, every algorithm: exactly 100 of 1000 pass; remaining 99..0, distinct."""
    limiter = RateLimiter(burst_store, clock=ManualClock(864_000.0, wall_start=1_728_000_000.0))
    responses = await concurrent_requests(limiter, "100/minute", algorithm)
    statuses = [response.status_code for response in responses]
    assert (100, 900) == (statuses.count(200), statuses.count(429))
    assert list(range(99, -1, -1)) == admitted_remaining(responses)


async def test_redis_server_time_admits_exactly_100_of_1000(
    burst_redis_store: RedisStore,
) -> None:
    """Without an injected clock (the Redis server's TIME), the count is exact as well."""
    responses = await concurrent_requests(RateLimiter(burst_redis_store), "100/hour", "gcra")
    statuses = [response.status_code for response in responses]
    assert (100, 900) == (statuses.count(200), statuses.count(429))
    assert list(range(99, -1, -1)) == admitted_remaining(responses)


async def test_the_limiter_api_is_exact_under_concurrency_too(burst_store: Store) -> None:
    """limiter.hit from 1000 tasks at once, cost 3 on 300/minute: exactly 100 admitted."""
    limiter = RateLimiter(burst_store, clock=ManualClock(864_000.0, wall_start=1_728_000_000.0))
    limit = Limit("300/minute; 100000/day", name="api")
    decisions = await asyncio.gather(*(limiter.hit(limit, "alice", cost=3) for _ in range(1000)))
    left = sorted((d.quotas[0].remaining for d in decisions if d.allowed), reverse=True)
    assert (100, list(range(297, -1, -3))) == (sum(d.allowed for d in decisions), left)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rate", "algorithm", "frozen"),
    [("100/minute", "sliding_window", True), ("100/hour", "gcra", False)],
    ids=["sliding-frozen-clock", "gcra-server-time"],
)
async def test_two_processes_sharing_redis_admit_exactly_100_of_300(
    redis_url: str, rate: str, algorithm: str, frozen: bool
) -> None:
    """Two worker processes, 150 concurrent requests each, one budget of 100 in Redis.

    Exactly 100 are admitted in total, and the remaining values of the admitted responses are
    99..0, each exactly once: the processes never saw the same count.
    """
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
        "RATE": rate,
        "ALGORITHM": algorithm,
        "REQUESTS": "150",
        "FROZEN_TIME": "1728000000" if frozen else "",
    }
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER,
            cwd=ROOT,
            env=environment,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            assert worker.stdout is not None
            ready = await asyncio.wait_for(worker.stdout.readline(), 60)
            assert b"ready\n" == ready
        for worker in workers:  # both were ready: release them together
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        for worker in workers:
            stdout, stderr = await asyncio.wait_for(worker.communicate(), 60)
            assert 0 == worker.returncode, stderr.decode()
            outputs.append([orjson.loads(line) for line in stdout.splitlines()])
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        async with Redis.from_url(redis_url) as admin:
            keys = [key async for key in admin.scan_iter(match=f"{prefix}:*")]
            if keys:
                await admin.unlink(*keys)
    lines = outputs[0] + outputs[1]
    admitted = [header for status, header in lines if status == 200]
    left = sorted(
        (remaining({"ratelimit": header}, "default") for header in admitted), reverse=True
    )
    assert (300, 100, 200) == (
        len(lines),
        len(admitted),
        sum(status == 429 for status, _ in lines),
    )
    assert list(range(99, -1, -1)) == left
    # Both processes were released together, and each admitted some (11 at the least seen).
    assert [True, True] == [any(status == 200 for status, _ in output) for output in outputs]
