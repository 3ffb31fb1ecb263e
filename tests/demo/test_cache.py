"""The demo's cached album and track listings: hits, per-album invalidation by writes."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_album_listings_are_served_from_the_cache(client: httpx.AsyncClient) -> None:
    """The second read of a listing, an album and a track list is a hit with the same body."""
    for path in ("/albums?limit=5", "/albums/1", "/tracks?album_id=1"):
        first = await client.get(path)
        second = await client.get(path)

        assert (200, "bastion; fwd=miss; stored", "bastion; hit") == (
            first.status_code,
            first.headers["cache-status"],
            second.headers["cache-status"],
        )
        assert first.json() == second.json()


async def test_a_new_album_purges_the_listings(client: httpx.AsyncClient) -> None:
    """POST /albums: the next listing is fresh and holds the new album; 404s for it go too."""
    before = (await client.get("/albums?limit=1")).json()["total"]
    missing = await client.get(f"/albums/{before + 1}")

    created = await client.post(
        "/albums", json={"artist_id": 1, "title": "Fresh", "year": 2024, "genre": "jazz"}
    )
    after = await client.get("/albums?limit=1")
    found = await client.get(created.headers["location"])

    assert (404, 201) == (missing.status_code, created.status_code)
    assert (before + 1, "bastion; fwd=miss; stored") == (
        after.json()["total"],
        after.headers["cache-status"],
    )
    assert (200, "Fresh") == (found.status_code, found.json()["title"])


async def test_a_new_track_purges_its_album_and_no_other(client: httpx.AsyncClient) -> None:
    """POST /albums/1/tracks: album 1 and the track lists are fresh; album 2 is still a hit."""
    one = (await client.get("/albums/1")).json()
    await client.get("/albums/2")
    await client.get("/tracks?album_id=1")

    added = await client.post("/albums/1/tracks", json={"title": "Bonus", "duration_s": 200})
    album_one = await client.get("/albums/1")
    album_two = await client.get("/albums/2")
    tracks = await client.get("/tracks?album_id=1")

    assert 201 == added.status_code
    assert (len(one["tracks"]) + 1, "Bonus") == (
        len(album_one.json()["tracks"]),
        album_one.json()["tracks"][-1]["title"],
    )
    assert ("bastion; fwd=miss; stored", "bastion; hit", "bastion; fwd=miss; stored") == (
        album_one.headers["cache-status"],
        album_two.headers["cache-status"],
        tracks.headers["cache-status"],
    )


async def test_writes_need_the_key_and_refused_writes_purge_nothing(
    client: httpx.AsyncClient,
) -> None:
    """Without the API key the write is a 401 and the cached album stays a hit."""
    await client.get("/albums/3")
    refused = await client.post(
        "/albums/3/tracks", json={"title": "x", "duration_s": 1}, headers={"x-api-key": ""}
    )
    again = await client.get("/albums/3")

    assert (401, "bastion; hit") == (refused.status_code, again.headers["cache-status"])


async def test_adding_a_track_to_a_missing_album_is_a_404(client: httpx.AsyncClient) -> None:
    """The album must exist."""
    response = await client.post("/albums/99999/tracks", json={"title": "x", "duration_s": 1})

    assert (404, "application/problem+json") == (
        response.status_code,
        response.headers["content-type"],
    )
