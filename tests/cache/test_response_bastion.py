"""The response cache installed by ``Bastion(app)``: declared with ``@bastion.cache``, keyed by
the coding compression chooses, private per credential, purged by tag, configured by settings."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from tests.asgi import client_for
from tests.waiting import wait_until

ALBUMS = [{"id": i, "title": f"album {i}", "artist": "someone"} for i in range(60)]

pytestmark = pytest.mark.anyio


def make_app(**overrides: Any) -> tuple[FastAPI, Bastion, Counter[str]]:
    """A FastAPI app under Bastion with a cached listing, settings from ``overrides`` only."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, **overrides))
    runs: Counter[str] = Counter()

    @app.get("/albums")
    @bastion.cache(ttl=60, tags=["albums"])
    async def albums() -> list[dict[str, Any]]:
        runs["albums"] += 1
        return ALBUMS

    @app.post("/albums")
    @bastion.invalidates("albums")
    async def add_album() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/tracks")
    async def tracks() -> list[int]:
        runs["tracks"] += 1
        return [1, 2, 3]

    return app, bastion, runs


async def test_bastion_cache_serves_hits_before_the_framework() -> None:
    """``@bastion.cache``: one handler run; hits carry the request id of their own request."""
    app, _, runs = make_app()
    async with client_for(app) as client:
        first = await client.get("/albums")
        second = await client.get("/albums")

    assert (1, "bastion; hit") == (runs["albums"], second.headers["cache-status"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert ALBUMS == second.json()


@pytest.mark.parametrize("encoding", ["br", "gzip", "zstd"])
async def test_each_coding_gets_its_own_stored_variant(encoding: str) -> None:
    """``Accept-Encoding``: the compressed variant is stored once per coding and decodes right."""
    app, _, runs = make_app()
    async with client_for(app) as client:
        headers = {"accept-encoding": encoding}
        miss = await client.get("/albums", headers=headers)
        hit = await client.get("/albums", headers=headers)
        identity = await client.get("/albums", headers={"accept-encoding": "identity"})
        reordered = await client.get("/albums", headers={"accept-encoding": f"{encoding}, foo"})

    assert (encoding, encoding) == (
        miss.headers["content-encoding"],
        hit.headers["content-encoding"],
    )
    # httpx decodes the body by its Content-Encoding: a wrong variant would not decode.
    assert (ALBUMS, ALBUMS) == (miss.json(), hit.json())
    assert "accept-encoding" in hit.headers["vary"].lower()
    assert ("bastion; hit", "bastion; fwd=miss; stored", "bastion; hit") == (
        hit.headers["cache-status"],
        identity.headers["cache-status"],
        reordered.headers["cache-status"],
    )
    assert "content-encoding" not in identity.headers
    assert 2 == runs["albums"]


async def test_the_etag_names_the_variant_and_answers_304() -> None:
    """Each coding has its own strong ETag; If-None-Match with it gets 304 from the cache."""
    app, _, _ = make_app()
    async with client_for(app) as client:
        br = await client.get("/albums", headers={"accept-encoding": "br"})
        gzip = await client.get("/albums", headers={"accept-encoding": "gzip"})
        again = await client.get(
            "/albums", headers={"accept-encoding": "br", "if-none-match": br.headers["etag"]}
        )

    assert br.headers["etag"] != gzip.headers["etag"]
    assert (304, b"") == (again.status_code, again.content)


async def test_a_write_and_cache_purge_invalidate_by_tag() -> None:
    """``@bastion.invalidates`` on POST, and ``bastion.cache_purge``."""
    app, bastion, runs = make_app()
    async with client_for(app) as client:
        await client.get("/albums")
        await client.post("/albums")
        await client.get("/albums")
        await bastion.cache_purge("albums")
        await client.get("/albums")
        await client.get("/albums")

    assert 3 == runs["albums"]


async def test_rules_from_settings_cache_undecorated_routes() -> None:
    """``BASTION_CACHE__RULES=["/tracks=30"]``."""
    app, _, runs = make_app(cache={"rules": ["/tracks=30"]})
    async with client_for(app) as client:
        await client.get("/tracks")
        hit = await client.get("/tracks")

    assert (1, "bastion; hit") == (runs["tracks"], hit.headers["cache-status"])


async def test_the_cache_can_be_turned_off() -> None:
    """``BASTION_CACHE__ENABLED=false``: every request runs the handler."""
    app, _, runs = make_app(cache={"enabled": False})
    async with client_for(app) as client:
        await client.get("/albums")
        response = await client.get("/albums")

    assert (2, None) == (runs["albums"], response.headers.get("cache-status"))


def test_an_invalid_rule_fails_at_startup_naming_the_variable() -> None:
    """The error names ``BASTION_CACHE__RULES[1]``."""
    with pytest.raises(ConfigurationError, match=r"BASTION_CACHE__RULES\[1\]"):
        make_app(cache={"rules": ["/a=1", "/b=soon"]})


async def test_a_refresh_started_by_a_stale_hit_is_drained_at_shutdown() -> None:
    """stale-while-revalidate answers at once and refreshes in the background; the lifespan
    shutdown waits for that refresh (it is the shutdown coordinator's background work) instead
    of closing resources under it."""
    clock = ManualClock()
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, logging={"configure": False}), clock=clock)
    gate = anyio.Event()
    runs: list[int] = []
    order: list[str] = []

    @app.get("/albums")
    @bastion.cache(ttl=10, stale_while_revalidate=60)
    async def albums() -> dict[str, int]:
        runs.append(len(runs) + 1)
        if len(runs) > 1:
            await gate.wait()  # the refresh is still running when shutdown begins
            order.append("refresh done")
        return {"version": len(runs)}

    coordinator = bastion.shutdown_coordinator

    async def release_once_shutdown_waits() -> None:
        await wait_until(lambda: coordinator.draining)
        await anyio.wait_all_tasks_blocked()  # the shutdown is blocked on something, or over
        gate.set()

    async with anyio.create_task_group() as group:
        async with client_for(app) as client:
            await client.get("/albums")
            clock.advance(20)
            stale = await client.get("/albums")
            await wait_until(lambda: coordinator.background == 1)
            group.start_soon(release_once_shutdown_waits)
        order.append("shutdown done")

    assert {"version": 1} == stale.json()
    assert ["refresh done", "shutdown done"] == order
    assert 0 == coordinator.background
