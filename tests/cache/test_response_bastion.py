"""The response cache installed by ``Bastion(app)``: declared with ``@bastion.cache``, keyed by
the coding compression chooses, private per credential, purged by tag, configured by settings."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion.exceptions import ConfigurationError
from tests.asgi import client_for

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
