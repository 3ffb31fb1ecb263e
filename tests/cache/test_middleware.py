"""CacheMiddleware: hits, keys, RFC 9111 directives, sizes, tags, on memory and real Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, CacheMiddleware, cache_layer
from bastion.cache._policy import declarations
from bastion.events import CacheHit, CacheMiss, CacheStored
from bastion.types import Message, Receive, Scope, Send
from tests.asgi import http_scope
from tests.cache.conftest import Recorder
from tests.cache.responses import BASE, CountedApp, client_for

pytestmark = pytest.mark.anyio


async def test_a_second_request_is_served_from_the_cache(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """The handler runs once; the hit carries the same body, ETag, an Age and Cache-Status."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        first = await client.get("/albums")
        manual_clock.advance(7)
        second = await client.get("/albums")

    assert 1 == counted.runs["albums"]
    assert "bastion; fwd=miss; stored" == first.headers["cache-status"]
    assert "bastion; hit" == second.headers["cache-status"]
    assert "7" == second.headers["age"]
    assert first.content == second.content
    assert first.headers["etag"] == second.headers["etag"]
    assert str(len(second.content)) == second.headers["content-length"]


async def test_an_entry_expires_after_its_ttl(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """After ``ttl`` seconds the handler runs again and its new answer is served."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        counted.version = 2
        manual_clock.advance(61)
        response = await client.get("/albums")

    assert 2 == counted.runs["albums"]
    assert 2 == response.json()["version"]


async def test_head_is_served_from_the_get_entry_without_a_body(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """HEAD shares GET's entry on a route that answers HEAD: same headers, no body, one run."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        get = await client.get("/albums")
        head = await client.head("/albums")

    assert 1 == counted.runs["albums"]
    assert (b"", get.headers["etag"], "bastion; hit") == (
        head.content,
        head.headers["etag"],
        head.headers["cache-status"],
    )


async def test_query_order_and_encoding_share_one_entry(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``b=2&a=1``, ``a=1&b=2`` and ``a=%31&b=2`` are one key; ``a=2`` is another."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        for query in ("b=2&a=1", "a=1&b=2", "a=%31&b=2"):
            await client.get(f"/albums?{query}")
        await client.get("/albums?a=2&b=2")

    assert 2 == counted.runs["albums"]


async def test_a_response_to_one_credential_never_reaches_another(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """What ``Bearer A`` got is never served to ``Bearer B`` nor to an anonymous request."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        a = await client.get("/me", headers={"authorization": "Bearer A"})
        b = await client.get("/me", headers={"authorization": "Bearer B"})
        anonymous = await client.get("/me")
        a_again = await client.get("/me", headers={"authorization": "Bearer A"})
        cookie = await client.get("/me", headers={"cookie": "session=1"})

    assert [
        {"authorization": "Bearer A"},
        {"authorization": "Bearer B"},
        {"authorization": None},
        {"authorization": "Bearer A"},
        {"authorization": None},
    ] == [r.json() for r in (a, b, anonymous, a_again, cookie)]
    assert ["fwd=miss", "fwd=miss", "fwd=miss", "hit", "fwd=miss"] == [
        r.headers["cache-status"].split("; ")[1] for r in (a, b, anonymous, a_again, cookie)
    ]
    assert 4 == counted.runs["me"]


async def test_a_public_route_shares_its_entry_whatever_the_credentials(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``public=True``: one entry for every caller."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        await client.get("/catalog", headers={"authorization": "Bearer A"})
        response = await client.get("/catalog")

    assert (1, "bastion; hit") == (counted.runs["catalog"], response.headers["cache-status"])


@pytest.mark.parametrize(
    "cache_control",
    ["no-store", "no-cache", "private", "max-age=0", "s-maxage=0, max-age=60"],
)
async def test_the_apps_cache_control_can_forbid_storing(
    memory_backend: CacheBackend, manual_clock: ManualClock, cache_control: str
) -> None:
    """``no-store``, ``no-cache``, ``private`` (anonymous request) and a zero lifetime: no entry."""
    counted = CountedApp()
    counted.headers = {"cache-control": cache_control}
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        response = await client.get("/albums")

    assert (2, "bastion; fwd=miss") == (counted.runs["albums"], response.headers["cache-status"])


async def test_max_age_from_the_app_sets_the_lifetime(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``max-age=5`` overrides the route's 60 s; ``s-maxage`` overrides ``max-age``."""
    counted = CountedApp()
    counted.headers = {"cache-control": "max-age=5"}
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        manual_clock.advance(4)
        fresh = await client.get("/albums")
        manual_clock.advance(2)
        await client.get("/albums")
        counted.headers = {"cache-control": "max-age=5, s-maxage=100"}
        await client.get("/albums?s")
        manual_clock.advance(50)
        shared = await client.get("/albums?s")

    assert ("bastion; hit", "bastion; hit") == (
        fresh.headers["cache-status"],
        shared.headers["cache-status"],
    )
    assert 3 == counted.runs["albums"]


async def test_a_response_setting_a_cookie_is_never_stored(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``Set-Cookie`` belongs to one client."""
    counted = CountedApp()
    counted.headers = {"set-cookie": "session=abc"}
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        await client.get("/albums")

    assert 2 == counted.runs["albums"]


@pytest.mark.parametrize(
    ("status", "stored"),
    [(200, True), (404, True), (410, True), (500, False), (302, False), (201, False)],
)
async def test_only_cacheable_statuses_are_stored(
    memory_backend: CacheBackend, manual_clock: ManualClock, status: int, stored: bool
) -> None:
    """RFC 9110's heuristically cacheable statuses are stored; others always reach the app."""
    counted = CountedApp()
    counted.status = status
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        await client.get("/albums")

    assert (1 if stored else 2) == counted.runs["albums"]


async def test_vary_star_is_never_stored(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``Vary: *`` says the response depends on more than the request."""
    counted = CountedApp()
    counted.headers = {"vary": "*"}
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        await client.get("/albums")

    assert 2 == counted.runs["albums"]


async def test_responses_varying_on_a_header_are_kept_apart(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``Vary: Accept-Language``: one entry per language, learned from the response."""
    counted = CountedApp()
    counted.headers = {"vary": "Accept-Language"}
    async with client_for(counted, backend, manual_clock) as client:
        en = await client.get("/albums", headers={"accept-language": "en"})
        counted.version = 2
        fr = await client.get("/albums", headers={"accept-language": "fr"})
        en_again = await client.get("/albums", headers={"accept-language": "en"})

    assert [1, 2, 1] == [r.json()["version"] for r in (en, fr, en_again)]
    assert "bastion; hit" == en_again.headers["cache-status"]


async def test_a_second_worker_learns_vary_from_the_marker(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """Another middleware on the same backend finds the marker and looks up the right key."""
    first, second = CountedApp(), CountedApp()
    first.headers = second.headers = {"vary": "Accept-Language"}
    second.version = 2
    async with client_for(first, backend, manual_clock) as client:
        await client.get("/albums", headers={"accept-language": "en"})
    async with client_for(second, backend, manual_clock) as client:
        en = await client.get("/albums", headers={"accept-language": "en"})
        fr = await client.get("/albums", headers={"accept-language": "fr"})

    assert ([1, 2], 1) == ([en.json()["version"], fr.json()["version"]], second.runs["albums"])


async def test_the_clients_no_cache_runs_the_handler_and_refreshes_the_entry(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``Cache-Control: no-cache`` (and ``max-age=0``) revalidate: the new answer is stored."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        await client.get("/albums")
        counted.version = 2
        forced = await client.get("/albums", headers={"cache-control": "no-cache"})
        counted.version = 3
        zero = await client.get("/albums", headers={"cache-control": "max-age=0"})
        after = await client.get("/albums")

    assert [2, 3, 3] == [r.json()["version"] for r in (forced, zero, after)]
    assert "bastion; fwd=request; stored" == forced.headers["cache-status"]
    assert "bastion; hit" == after.headers["cache-status"]


async def test_the_clients_no_store_bypasses_the_cache(
    backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``no-store``: the handler runs, nothing is read or written."""
    counted = CountedApp()
    async with client_for(counted, backend, manual_clock) as client:
        bypassed = await client.get("/albums", headers={"cache-control": "no-store"})
        after = await client.get("/albums")

    assert ("bastion; fwd=request", "bastion; fwd=miss; stored") == (
        bypassed.headers["cache-status"],
        after.headers["cache-status"],
    )


async def test_client_directives_can_be_ignored(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``honor_request_cache_control=False``: ``no-cache`` from the client changes nothing."""
    counted = CountedApp()
    async with client_for(
        counted, memory_backend, manual_clock, honor_request_cache_control=False
    ) as client:
        await client.get("/albums")
        response = await client.get("/albums", headers={"cache-control": "no-cache"})

    assert (1, "bastion; hit") == (counted.runs["albums"], response.headers["cache-status"])


async def test_the_clients_max_age_and_min_fresh_reject_older_entries(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``max-age=5`` refuses a 10 s old entry; ``min-fresh=55`` one with under 55 s left."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/albums")
        manual_clock.advance(10)
        young = await client.get("/albums", headers={"cache-control": "max-age=5"})
        manual_clock.advance(10)
        fresh_enough = await client.get("/albums", headers={"cache-control": "min-fresh=55"})
        ok = await client.get("/albums", headers={"cache-control": "max-age=30"})

    assert ["fwd=request", "fwd=request", "hit"] == [
        r.headers["cache-status"].split("; ")[1] for r in (young, fresh_enough, ok)
    ]


async def test_only_if_cached_gets_504_on_a_miss(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``only-if-cached`` never reaches the handler."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        response = await client.get("/albums", headers={"cache-control": "only-if-cached"})

    assert (504, 0) == (response.status_code, counted.runs["albums"])
    assert "application/problem+json" == response.headers["content-type"]


async def test_a_body_over_the_limit_is_sent_and_not_stored(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``max_entry_bytes``: a larger response passes through whole; the handler runs each time."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        first = await client.get("/big")
        second = await client.get("/big")

    assert (b"x" * 1000, 2) == (second.content, counted.runs["big"])
    assert "bastion; fwd=miss" == first.headers["cache-status"]


async def test_a_stream_over_the_limit_passes_through_whole(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """A streamed body that outgrows the limit is flushed and streamed on, never stored."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        first = await client.get("/stream")
        second = await client.get("/stream")

    assert (b"y" * 250, b"y" * 250, 2) == (first.content, second.content, counted.runs["stream"])


async def test_routes_without_a_policy_are_not_touched(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """No policy, no Cache-Status, the handler runs every time."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        first = await client.get("/plain")
        await client.get("/plain")

    assert (2, None) == (counted.runs["plain"], first.headers.get("cache-status"))


async def test_rules_give_routes_a_policy_by_pattern(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """``rules=["/pla*=30"]`` caches a route that has no decorator, for 30 s."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock, rules=["/pla*=30"]) as client:
        await client.get("/plain")
        manual_clock.advance(29)
        hit = await client.get("/plain")
        manual_clock.advance(2)
        await client.get("/plain")

    assert ("bastion; hit", 2) == (hit.headers["cache-status"], counted.runs["plain"])


async def test_hits_misses_and_stores_are_published(
    memory_backend: CacheBackend, manual_clock: ManualClock, recorder: Recorder
) -> None:
    """One miss (stored) then one hit: the events say so, with the route template."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock, hooks=recorder.hooks) as client:
        await client.get("/albums/3")
        await client.get("/albums/3")

    assert [
        CacheStored(route="/albums/{album_id}", bytes=len(b'{"id":3,"version":1}'), ttl_s=60.0),
        CacheMiss(route="/albums/{album_id}", method="GET", reason="miss", stored=True),
        CacheHit(route="/albums/{album_id}", method="GET", age_s=0.0),
    ] == [e for e in recorder.events if isinstance(e, CacheHit | CacheMiss | CacheStored)]


async def test_concurrent_misses_run_the_handler_once(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """500 concurrent requests for a cold key: one handler run, 500 identical bodies."""
    counted = CountedApp()
    counted.gate = asyncio.Event()
    async with client_for(counted, memory_backend, manual_clock) as client:
        requests = [asyncio.create_task(client.get("/albums/9")) for _ in range(500)]
        await counted.started.wait()
        for _ in range(50):
            await asyncio.sleep(0)  # let every request reach the cache
        counted.gate.set()
        responses = await asyncio.gather(*requests)

    assert 1 == counted.runs["album:9"]
    assert {b'{"id":9,"version":1}'} == {r.content for r in responses}
    assert 499 == sum(
        r.headers["cache-status"] == "bastion; fwd=miss; collapsed" for r in responses
    )


async def test_rules_match_raw_paths_when_no_route_does(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """A rule can cache what no route serves (here FastAPI's 404), keyed by the raw path."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock, rules=["/gone/*=30"]) as client:
        first = await client.get("/gone/a")
        second = await client.get("/gone/a")
        other = await client.get("/gone/b")

    assert (404, "bastion; fwd=miss; stored") == (first.status_code, first.headers["cache-status"])
    assert ("bastion; hit", "bastion; fwd=miss; stored") == (
        second.headers["cache-status"],
        other.headers["cache-status"],
    )


async def test_head_is_cached_only_where_the_app_answers_head(
    memory_backend: CacheBackend, manual_clock: ManualClock
) -> None:
    """FastAPI's GET routes answer HEAD with 405: a stored GET entry does not change that."""
    counted = CountedApp()
    async with client_for(counted, memory_backend, manual_clock) as client:
        await client.get("/catalog")
        head = await client.head("/catalog")

    assert (405, None) == (head.status_code, head.headers.get("cache-status"))


async def test_head_on_an_etag_only_route_goes_to_the_app(manual_clock: ManualClock) -> None:
    """A HEAD response has no body to hash: it reaches the app and keeps its own length."""
    app = Starlette(routes=[Route("/page", page)])  # Starlette routes answer HEAD
    app.add_middleware(
        CacheMiddleware, clock=manual_clock, rules=[{"path": "/page", "store": False}]
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        get = await client.get("/page")
        head = await client.head("/page")

    assert ("4", b"", "bastion; fwd=method") == (
        head.headers["content-length"],
        head.content,
        head.headers["cache-status"],
    )
    assert "etag" in get.headers


async def page(request: Request) -> PlainTextResponse:
    """A Starlette endpoint."""
    return PlainTextResponse("page")


def test_the_layer_is_left_out_when_nothing_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cache_layer``: no declaration and no rule, no middleware; otherwise a CacheMiddleware."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None: ...

    monkeypatch.setattr(declarations, "count", 0)
    alone = cache_layer(app)
    with_rule = cache_layer(app, rules=["/a=1"])
    monkeypatch.setattr(declarations, "count", 1)
    declared = cache_layer(app)

    assert (app, CacheMiddleware, CacheMiddleware) == (alone, type(with_rule), type(declared))


async def test_an_event_stream_on_a_cached_route_is_never_held(manual_clock: ManualClock) -> None:
    """``text/event-stream``: each event reaches the client before the app sends the next."""
    delivered = asyncio.Event()

    async def events(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.wait_for(delivered.wait(), 5)  # a held event would never arrive
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    middleware = CacheMiddleware(events, clock=manual_clock, rules=["/events=60"])
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("body") == b"data: 1\n\n":
            delivered.set()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await middleware(http_scope("/events"), receive, send)
    await middleware(http_scope("/events"), receive, send)

    assert [b"data: 1\n\n", b"data: 2\n\n"] * 2 == [m["body"] for m in sent if "body" in m]
