"""Stale responses (RFC 5861): stale-while-revalidate and stale-if-error, on an injected clock."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, CacheMiddleware, cache
from bastion.context import SCOPE_KEY, RequestContext
from bastion.events import CacheStaleServed
from tests.asgi import call, http_scope
from tests.cache.conftest import Recorder
from tests.cache.responses import CountedApp, client_for

pytestmark = pytest.mark.anyio


async def refreshed(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """The first fresh hit on ``path``, once the background refresh has stored its response."""
    for _ in range(500):
        response = await client.get(path)
        if response.headers["cache-status"] == "bastion; hit":
            return response
        await asyncio.sleep(0.01)  # the refresh runs on this loop, on real Redis I/O
    raise AssertionError("the background refresh never stored its response")


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(
    backend: CacheBackend, manual_clock: ManualClock, recorder: Recorder
) -> None:
    """Expired within the window: concurrent requests get the stale body at once; one refresh."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock, hooks=recorder.hooks) as client:
        await client.get("/albums/1")
        counted.version = 2
        manual_clock.advance(70)
        counted.gate = asyncio.Event()  # the refresh waits until every stale request is served
        stale = await asyncio.gather(*(client.get("/albums/1") for _ in range(20)))
        events = len(recorder.of(CacheStaleServed))
        counted.gate.set()
        fresh = await refreshed(client, "/albums/1")

    assert {1} == {r.json()["version"] for r in stale}
    assert {"bastion; hit; ttl=-10; detail=stale-while-revalidate"} == {
        r.headers["cache-status"] for r in stale
    }
    assert (2, "bastion; hit") == (fresh.json()["version"], fresh.headers["cache-status"])
    assert 2 == counted.runs["album:1"]
    assert 20 == events


async def test_stale_if_error_serves_stale_when_the_handler_raises(
    backend: CacheBackend, manual_clock: ManualClock, recorder: Recorder
) -> None:
    """Past the revalidation window but within stale-if-error: the stale body, said so."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock, hooks=recorder.hooks) as client:
        await client.get("/albums/1")
        manual_clock.advance(100)
        counted.fail = RuntimeError("database down")
        response = await client.get("/albums/1")

    assert (200, {"id": 1, "version": 1}) == (response.status_code, response.json())
    assert "bastion; fwd=stale; ttl=-40; detail=stale-if-error" == response.headers["cache-status"]
    assert "100" == response.headers["age"]
    assert [
        CacheStaleServed(
            route="/albums/{album_id}", method="GET", reason="stale-if-error", stale_s=40.0
        )
    ] == recorder.of(CacheStaleServed)


async def test_stale_if_error_stands_in_for_a_5xx(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """A 503 from the handler is replaced by the stale response; Cache-Status gives the 503."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        await client.get("/albums/1")
        manual_clock.advance(100)
        counted.status = 503
        response = await client.get("/albums/1")

    assert (200, "bastion; fwd=stale; fwd-status=503; ttl=-40; detail=stale-if-error") == (
        response.status_code,
        response.headers["cache-status"],
    )


async def test_a_successful_revalidation_replaces_the_stale_entry(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """Past the revalidation window, a working handler answers and its answer is stored."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums/1")
        manual_clock.advance(100)
        counted.version = 2
        revalidated = await client.get("/albums/1")
        after = await client.get("/albums/1")

    assert "bastion; fwd=stale; stored" == revalidated.headers["cache-status"]
    assert (2, "bastion; hit") == (after.json()["version"], after.headers["cache-status"])


async def test_after_the_stale_if_error_window_the_error_goes_through(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """Too old to stand in: the handler's 503 is what the client gets."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums/1")
        manual_clock.advance(60 + 301)
        counted.status = 503
        response = await client.get("/albums/1")

    assert 503 == response.status_code


async def test_must_revalidate_from_the_app_forbids_stale_responses(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``must-revalidate``: after expiry the handler's error goes through."""
    counted = CountedApp()
    counted.headers = {"cache-control": "max-age=60, must-revalidate"}
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums/1")
        manual_clock.advance(70)
        counted.status = 503
        response = await client.get("/albums/1")

    assert 503 == response.status_code


async def test_stale_if_error_covers_a_handler_running_past_the_deadline(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """With a request deadline, a handler still running at the deadline is replaced by stale."""
    app = FastAPI()
    hang = asyncio.Event()
    runs = 0

    @app.get("/slow")
    @cache(ttl=10, stale_if_error=60)
    async def slow() -> dict[str, int]:
        nonlocal runs
        runs += 1
        if runs > 1:
            await hang.wait()  # never set: only the deadline ends it
        return {"run": runs}

    middleware = CacheMiddleware(app, backend=memory_backend, clock=manual_clock)

    def scope() -> dict[str, object]:
        context = RequestContext("id", "trace", "GET", "/slow", "/slow")
        context.deadline = manual_clock.monotonic() + 0.05
        return {**http_scope("/slow"), "app": app, SCOPE_KEY: context}

    await call(middleware, scope())
    manual_clock.advance(20)
    response = await call(middleware, scope())

    assert (200, {"run": 1}) == (response.status, response.json())
    assert "bastion; fwd=stale; ttl=-10; detail=stale-if-error" == response.headers["cache-status"]
