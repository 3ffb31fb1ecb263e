"""Store outages: each policy against a real Redis that is killed mid-test, then restarted.

The store's health gate runs on a ManualClock, so the test decides when the gate lets a probe
through after Redis is back; nothing sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion.events import Event, Hooks, RateLimitStoreFailure
from bastion.problem import PROBLEM_CONTENT_TYPE
from bastion.ratelimit import (
    TEMPORARY_REDUCED_CAPACITY,
    OnStoreError,
    RateLimiter,
    RateLimitMiddleware,
    RateLimitRefused,
    limit,
    rate_limit_problem,
)
from bastion.stores.redis import RedisStore
from bastion.types import ASGIApp
from tests.ratelimit.headers import parse_list

pytestmark = pytest.mark.anyio

GATE_DELAY_S = 5.0


class RedisServer(Protocol):
    """What these tests use of conftest's ``RedisServer``."""

    @property
    def url(self) -> str: ...
    def kill(self) -> None: ...
    def start(self) -> None: ...


async def ok(request: Request) -> Response:
    """The protected route."""
    return PlainTextResponse("ok")


@asynccontextmanager
async def limited_app(
    server: RedisServer, policy: OnStoreError, *, rate: str = "3/minute", **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ManualClock, list[Event]]]:
    """A Starlette app limited through ``server``, its gate on a manual clock, and its events."""
    gate_clock = ManualClock()
    events: list[Event] = []
    hooks = Hooks()
    hooks.subscribe(Event, events.append)
    store = RedisStore.from_url(server.url, base_delay_s=GATE_DELAY_S, clock=gate_clock)
    limiter = RateLimiter(store, on_store_error=policy, hooks=hooks, **options)
    app = Starlette(routes=[Route("/search", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rate=rate, algorithm="fixed_window")
    try:
        async with client(app) as http:
            yield http, gate_clock, events
    finally:
        await store.aclose()


@asynccontextmanager
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def statuses(http: httpx.AsyncClient, count: int) -> list[int]:
    """Status codes of ``count`` GETs of /search."""
    return [(await http.get("/search")).status_code for _ in range(count)]


async def recover(server: RedisServer, gate_clock: ManualClock) -> None:
    """Bring Redis back and let the gate's delay pass: the next request is the probe."""
    server.start()
    gate_clock.advance(GATE_DELAY_S)


async def test_fail_open_admits_everyone_while_redis_is_down_and_limits_again_after(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """fail_open: no request fails because of the limiter; one warning; limits resume."""
    server = redis_server_factory()
    caplog.set_level(logging.INFO, logger="bastion.ratelimit")
    async with limited_app(server, "fail_open") as (http, gate_clock, events):
        before = await statuses(http, 4)
        server.kill()
        during = [await http.get("/search") for _ in range(20)]
        await recover(server, gate_clock)
        after = await statuses(http, 4)
    assert ([200, 200, 200, 429], [200, 200, 200, 429]) == (before, after)
    assert ([200] * 20, [None] * 20) == (
        [response.status_code for response in during],
        [response.headers.get("ratelimit") for response in during],
    )
    failures = [event for event in events if isinstance(event, RateLimitStoreFailure)]
    assert (20, {("redis", "fail_open")}) == (
        len(failures),
        {(event.store, event.on_store_error) for event in failures},
    )
    messages = [record.getMessage() for record in caplog.records]
    assert (1, 1) == (
        sum("store failed" in message for message in messages),
        sum("answers again" in message for message in messages),
    )


async def test_fail_closed_answers_503_problems_and_limits_again_after(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """fail_closed: 503 temporary-reduced-capacity with Retry-After, never a 500."""
    server = redis_server_factory()
    async with limited_app(server, "fail_closed") as (http, gate_clock, _):
        before = await statuses(http, 2)
        server.kill()
        during = [await http.get("/search") for _ in range(10)]
        await recover(server, gate_clock)
        after = await statuses(http, 4)
    assert ([200, 200], [200, 200, 200, 429]) == (before, after)
    assert [503] * 10 == [response.status_code for response in during]
    refused = during[-1]
    assert (PROBLEM_CONTENT_TYPE, "5") == (
        refused.headers["content-type"],
        refused.headers["retry-after"],
    )
    assert {
        "type": TEMPORARY_REDUCED_CAPACITY,
        "title": "Request cannot be satisfied due to temporary server capacity constraints",
        "status": 503,
        "detail": "Rate limits cannot be checked right now; retry in 5 s.",
        "violated-policies": ["default"],
    } == refused.json()


async def test_local_fallback_counts_in_process_with_the_quota_divided_by_the_workers(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """local_fallback: with 2 expected workers, 10/minute becomes 5/minute per process."""
    server = redis_server_factory()
    clock = ManualClock(864_000.0, wall_start=1_728_000_000.0)
    async with limited_app(
        server, "local_fallback", rate="10/minute", expected_workers=2, clock=clock
    ) as (http, gate_clock, events):
        before = await statuses(http, 2)
        server.kill()
        during = [await http.get("/search") for _ in range(6)]
        await recover(server, gate_clock)
        after = await statuses(http, 11)
    assert ([200, 200], [200] * 10 + [429]) == (before, after)
    assert [200] * 5 + [429] == [response.status_code for response in during]
    assert [("default", {"q": 5, "w": 60})] == parse_list(during[0].headers["ratelimit-policy"])
    assert {"local_fallback"} == {
        event.on_store_error for event in events if isinstance(event, RateLimitStoreFailure)
    }


async def test_a_dependency_fails_closed_with_a_503_problem(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """limit() under fail_closed raises RateLimitUnavailable: a 503 problem, not a 500."""
    server = redis_server_factory()
    gate_clock = ManualClock()
    store = RedisStore.from_url(server.url, base_delay_s=GATE_DELAY_S, clock=gate_clock)
    limiter = RateLimiter(store, on_store_error="fail_closed")
    app = FastAPI()
    app.add_exception_handler(RateLimitRefused, rate_limit_problem)

    @app.get("/search", dependencies=[limit("3/minute", limiter=limiter)])
    async def search() -> dict[str, str]:
        return {}

    try:
        async with client(app) as http:
            before = (await http.get("/search")).status_code
            server.kill()
            during = [await http.get("/search") for _ in range(4)]
            await recover(server, gate_clock)
            after = (await http.get("/search")).status_code
    finally:
        await store.aclose()
    assert (200, [503] * 4, 200) == (before, [r.status_code for r in during], after)
    assert (TEMPORARY_REDUCED_CAPACITY, ["/search"]) == (
        during[-1].json()["type"],
        during[-1].json()["violated-policies"],
    )
