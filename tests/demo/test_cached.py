"""The demo's artist statistics, kept by ``@cached`` and purged by album and track writes."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio

HIT = (
    'bastion_cache_function_calls_total{function="demo.artist_stats",result="hit",source="memory"}'
)


async def test_artist_stats_are_computed_once_then_served_from_the_cache(
    client: httpx.AsyncClient,
) -> None:
    """The second read returns the same statistics, as a function-cache hit."""
    first = await client.get("/artists/1/stats")
    second = await client.get("/artists/1/stats")
    metrics = (await client.get("/_bastion/metrics")).text
    body = first.json()
    assert (200, body) == (second.status_code, second.json())
    assert (1, True) == (body["artist_id"], body["albums"] > 0 and body["tracks"] > 0)
    assert f"{HIT} 1" in metrics


async def test_album_and_track_writes_show_in_the_stats_at_once(
    client: httpx.AsyncClient,
) -> None:
    """A new album and a new track purge the cached statistics through their tags."""
    before = (await client.get("/artists/1/stats")).json()
    album = await client.post(
        "/albums", json={"artist_id": 1, "title": "Fresh", "year": 2024, "genre": "zydeco"}
    )
    after_album = (await client.get("/artists/1/stats")).json()
    track = await client.post(
        f"/albums/{album.json()['id']}/tracks", json={"title": "New", "duration_s": 100}
    )
    after_track = (await client.get("/artists/1/stats")).json()
    assert (201, 201) == (album.status_code, track.status_code)
    assert (before["albums"] + 1, "zydeco" in after_album["genres"]) == (
        after_album["albums"],
        True,
    )
    assert (before["tracks"] + 1, before["total_duration_s"] + 100) == (
        after_track["tracks"],
        after_track["total_duration_s"],
    )


async def test_stats_of_an_unknown_artist_are_a_404_problem(client: httpx.AsyncClient) -> None:
    """An artist that does not exist has no statistics, and nothing is cached for it."""
    response = await client.get("/artists/99999/stats")
    assert (404, "application/problem+json") == (
        response.status_code,
        response.headers["content-type"],
    )


async def test_artist_stats_are_rate_limited_by_their_declaration(
    client: httpx.AsyncClient,
) -> None:
    """@rate_limit on the endpoint: bastion's layer limits it per client, named after the route,
    and counts down."""
    first = await client.get("/artists/1/stats")
    second = await client.get("/artists/1/stats")
    assert first.headers["ratelimit-policy"].startswith(
        '"GET /artists/{artist_id}/stats";q=60;w=60'
    )
    remaining = [re.search(r";r=(\d+);", r.headers["ratelimit"]) for r in (first, second)]
    assert ["59", "58"] == [found.group(1) for found in remaining if found is not None]
