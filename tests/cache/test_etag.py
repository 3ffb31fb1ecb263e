"""ETags from content and conditional requests: 304 with no body, weak comparison."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, MemoryCacheBackend
from bastion.cache._etag import content_etag, not_modified_headers
from bastion.cache._http import etag_matches
from tests.cache.responses import CountedApp, client_for


def test_the_etag_is_a_hash_of_the_content() -> None:
    """Same bytes, same tag; different bytes, different tag."""
    assert content_etag(b"hello") == content_etag(b"hello")
    assert content_etag(b"hello") != content_etag(b"hello!")


def test_the_etag_is_stable_across_processes_and_restarts() -> None:
    """A known answer: BLAKE2b-128 of the body in hex, quoted; nothing per process goes in."""
    assert b'"46fb7408d4f285228f4af516ea25851b"' == content_etag(b"hello")


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (b'"abc"', True),
        (b'W/"abc"', True),
        (b'"x", "abc"', True),
        (b'"x" ,W/"abc" ', True),
        (b"*", True),
        (b'"abcd"', False),
        (b"abc", False),
        (b"", False),
    ],
)
def test_if_none_match_uses_weak_comparison(header: bytes, matches: bool) -> None:
    """RFC 9110 §13.1.2: ``W/`` is ignored on either side; ``*`` matches anything."""
    assert matches == etag_matches(header, b'"abc"')
    assert matches == etag_matches(header, b'W/"abc"')


def test_a_304_keeps_only_the_fields_that_update_a_cache() -> None:
    """Validators and caching fields stay; the body's own metadata goes."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"etag", b'"abc"'),
        (b"vary", b"accept-encoding"),
        (b"cache-control", b"max-age=60"),
        (b"content-encoding", b"br"),
    ]

    assert [
        (b"etag", b'"abc"'),
        (b"vary", b"accept-encoding"),
        (b"cache-control", b"max-age=60"),
    ] == not_modified_headers(headers)


@pytest.mark.anyio
async def test_if_none_match_on_a_hit_gets_304_without_a_body(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """The client's tag matches the stored one: 304, no body, the ETag and Cache-Status kept."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        first = await client.get("/albums")
        etag = first.headers["etag"]
        not_modified = await client.get("/albums", headers={"if-none-match": etag})
        weak = await client.get("/albums", headers={"if-none-match": f"W/{etag}"})
        other = await client.get("/albums", headers={"if-none-match": '"other"'})

    assert (304, b"", etag) == (
        not_modified.status_code,
        not_modified.content,
        not_modified.headers["etag"],
    )
    assert "content-length" not in not_modified.headers
    assert "bastion; hit" == not_modified.headers["cache-status"]
    assert (304, 200) == (weak.status_code, other.status_code)
    assert 1 == counted.runs["albums"]


@pytest.mark.anyio
async def test_if_none_match_on_a_miss_gets_304_from_the_fresh_response(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """The cache answers the condition itself after storing the full response."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        first = await client.get("/albums/1")
        etag = first.headers["etag"]
    again = CountedApp()
    async with client_for(again, MemoryCacheBackend(clock=manual_clock), manual_clock) as c:
        response = await c.get("/albums/1", headers={"if-none-match": etag})
        stored = await c.get("/albums/1")

    assert (304, b"", "bastion; fwd=miss; stored") == (
        response.status_code,
        response.content,
        response.headers["cache-status"],
    )
    assert (etag, "bastion; hit") == (stored.headers["etag"], stored.headers["cache-status"])


@pytest.mark.anyio
async def test_an_etag_only_route_answers_304_without_storing(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``cache(store=False, etag=True)``: every request runs the handler; a match gets 304."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        first = await client.get("/tagged")
        response = await client.get("/tagged", headers={"if-none-match": first.headers["etag"]})

    assert (304, b"", 2) == (response.status_code, response.content, counted.runs["tagged"])
    assert first.headers["etag"] == response.headers["etag"]
