"""``@cached``: hits and misses, keys, tags, serialization, single-flight, events, outages."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from bastion._clock import ManualClock
from bastion.cache import (
    CacheBackend,
    CachedFunction,
    MemoryCacheBackend,
    cached,
    purge,
    set_default_backend,
)
from bastion.events import CacheStoreFailure, FunctionCacheHit, FunctionCacheMiss, Hooks
from bastion.exceptions import CacheKeyError, CacheValueError, ConfigurationError
from tests.cache.conftest import Outage, Recorder

pytestmark = pytest.mark.anyio


class Album(BaseModel):
    """A result type that must come back as itself."""

    id: int
    title: str
    released: datetime.date
    tracks: tuple[str, ...]


class Calls:
    """Counts how often the cached function really ran, per argument."""

    def __init__(self) -> None:
        self.runs: list[object] = []

    def __len__(self) -> int:
        return len(self.runs)


async def test_second_call_is_a_hit(backend: CacheBackend) -> None:
    """The function runs once; the second call returns the stored result."""
    calls = Calls()

    @cached(ttl=60, backend=backend)
    async def double(x: int) -> int:
        calls.runs.append(x)
        return x * 2

    assert ([4, 4, 6], 2) == ([await double(2), await double(2), await double(3)], len(calls))


async def test_pydantic_results_round_trip(backend: CacheBackend) -> None:
    """A model with dates and tuples comes back from the store as an equal model."""
    album = Album(id=1, title="Blue", released=datetime.date(1971, 6, 22), tracks=("All I Want",))

    @cached(ttl=60, backend=backend)
    async def load(album_id: int) -> Album:
        return album

    first = await load(1)
    second = await load(1)
    assert (album, album, Album) == (first, second, type(second))
    assert second is not album


async def test_lists_of_models_round_trip(backend: CacheBackend) -> None:
    """The return annotation drives decoding, containers included."""

    @cached(ttl=60, backend=backend)
    async def load() -> list[Album]:
        return [Album(id=2, title="Hejira", released=datetime.date(1976, 11, 22), tracks=())]

    first = await load()
    assert first == await load()


async def test_results_without_annotation_use_json(backend: CacheBackend) -> None:
    """Without a return annotation, JSON types come back as they are."""

    @cached(ttl=60, backend=backend)
    async def load(x: int):  # type: ignore[no-untyped-def]
        return {"x": x, "items": [1, 2.5, None, "s"]}

    first = await load(1)
    assert (first, first) == (await load(1), {"x": 1, "items": [1, 2.5, None, "s"]})


async def test_hits_return_fresh_objects(memory_backend: MemoryCacheBackend) -> None:
    """A caller mutating its result does not change what the next caller gets."""

    @cached(ttl=60, backend=memory_backend)
    async def load() -> dict[str, list[int]]:
        return {"items": [1]}

    first = await load()
    first["items"].append(2)
    assert {"items": [1]} == await load()


async def test_custom_serializer(backend: CacheBackend) -> None:
    """serializer= replaces the default."""

    class Text:
        def dumps(self, value: Any) -> bytes:
            return str(value).encode()

        def loads(self, data: bytes) -> Any:
            return "loaded:" + data.decode()

    @cached(ttl=60, backend=backend, serializer=Text())
    async def load(x: int) -> str:
        return f"value-{x}"

    assert ("value-1", "loaded:value-1") == (await load(1), await load(1))


async def test_unserializable_result_raises_cache_value_error(
    memory_backend: MemoryCacheBackend,
) -> None:
    """A result the serializer cannot store raises CacheValueError naming the function."""

    @cached(ttl=60, backend=memory_backend, name="opaque")
    async def load():  # type: ignore[no-untyped-def]
        return object()

    with pytest.raises(CacheValueError, match=r"@cached\(opaque\).*builtins\.object"):
        await load()


async def test_unencodable_argument_raises_cache_key_error(
    memory_backend: MemoryCacheBackend,
) -> None:
    """An argument with no stable encoding raises CacheKeyError before the function runs."""
    calls = Calls()

    @cached(ttl=60, backend=memory_backend)
    async def load(client: object) -> int:
        calls.runs.append(client)
        return 1

    with pytest.raises(CacheKeyError, match="'client'"):
        await load(object())
    assert 0 == len(calls)


async def test_entries_expire_after_ttl(
    memory_backend: MemoryCacheBackend, manual_clock: ManualClock
) -> None:
    """After its TTL a result is computed again."""
    calls = Calls()

    @cached(ttl=datetime.timedelta(seconds=30), backend=memory_backend)
    async def load() -> int:
        calls.runs.append(None)
        return len(calls)

    first = await load()
    manual_clock.advance(29)
    second = await load()
    manual_clock.advance(1)
    assert (1, 1, 2) == (first, second, await load())


async def test_invalidate_drops_one_call(backend: CacheBackend) -> None:
    """invalidate(args) drops that call's entry only."""
    calls = Calls()

    @cached(ttl=60, backend=backend)
    async def load(x: int) -> int:
        calls.runs.append(x)
        return x

    await load(1)
    await load(2)
    existed = await load.invalidate(x=1)
    await load(1)
    await load(2)
    assert (True, [1, 2, 1]) == (existed, calls.runs)


async def test_purge_by_fixed_and_templated_tags(backend: CacheBackend) -> None:
    """Tags with placeholders are filled from the arguments; purge drops what they tag."""
    calls = Calls()

    @cached(ttl=60, backend=backend, tags=["albums", "album:{album_id}"])
    async def load(album_id: int) -> int:
        calls.runs.append(album_id)
        return album_id

    for album_id in (1, 2, 1, 2):
        await load(album_id)
    await purge("album:1", backend=backend)
    await load(1)
    await load(2)
    await purge("albums", backend=backend)
    await load(2)
    assert [1, 2, 1, 2] == calls.runs


async def test_tags_from_a_callable(backend: CacheBackend) -> None:
    """tags= may be a callable of the arguments."""
    calls = Calls()

    @cached(ttl=60, backend=backend, tags=lambda user_id: [f"user:{user_id}"])
    async def load(user_id: int) -> int:
        calls.runs.append(user_id)
        return user_id

    await load(7)
    await purge("user:7", backend=backend)
    await load(7)
    assert [7, 7] == calls.runs


async def test_a_purge_during_the_run_is_not_overwritten(backend: CacheBackend) -> None:
    """A result computed from data older than a purge of its tag is not stored."""
    calls = Calls()
    purge_now = asyncio.Event()
    purged = asyncio.Event()

    @cached(ttl=60, backend=backend, tags=["albums"])
    async def load() -> int:
        calls.runs.append(None)
        if len(calls) == 1:
            purge_now.set()
            await purged.wait()  # the data changes and is purged while we compute
        return len(calls)

    async def writer() -> None:
        await purge_now.wait()
        await purge("albums", backend=backend)
        purged.set()

    first, _ = await asyncio.gather(load(), writer())
    assert (1, 2) == (first, await load())


async def test_concurrent_calls_run_the_function_once(memory_backend: MemoryCacheBackend) -> None:
    """500 concurrent calls for a cold key run the function once and all get its result."""
    calls = Calls()
    release = asyncio.Event()

    @cached(ttl=60, backend=memory_backend)
    async def load(x: int) -> list[int]:
        calls.runs.append(x)
        await release.wait()
        return [x]

    tasks = [asyncio.create_task(load(1)) for _ in range(500)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert (1, 500) == (len(calls), sum(result == [1] for result in results))
    assert len({id(result) for result in results}) == 500  # each caller its own object


async def test_an_error_is_shared_with_concurrent_callers_and_not_cached(
    memory_backend: MemoryCacheBackend,
) -> None:
    """Concurrent callers of a failing run all get its error; the next call runs again."""
    calls = Calls()
    release = asyncio.Event()

    @cached(ttl=60, backend=memory_backend)
    async def load() -> int:
        calls.runs.append(None)
        await release.wait()
        raise LookupError("upstream said no")

    tasks = [asyncio.create_task(load()) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert (1, 20) == (len(calls), sum(isinstance(result, LookupError) for result in results))
    with pytest.raises(LookupError):
        await load()
    assert 2 == len(calls)


async def test_events_report_hits_and_misses(
    memory_backend: MemoryCacheBackend, recorder: Recorder, manual_clock: ManualClock
) -> None:
    """A miss and a hit are published with the function's name and the call's duration."""

    @cached(ttl=60, backend=memory_backend, hooks=recorder.hooks, clock=manual_clock, name="f")
    async def load() -> int:
        manual_clock.advance(0.25)
        return 1

    await load()
    await load()
    expected = [
        FunctionCacheMiss(function="f", shared=False, duration_s=0.25),
        FunctionCacheHit(function="f", level="memory", duration_s=0.0),
    ]
    assert expected == [
        event
        for event in recorder.events
        if isinstance(event, FunctionCacheHit | FunctionCacheMiss)
    ]


async def test_default_backend_and_hooks_come_from_set_default_backend(
    manual_clock: ManualClock,
) -> None:
    """Without backend= and hooks=, the ones given to set_default_backend are used."""
    backend = MemoryCacheBackend(clock=manual_clock)
    hooks = Hooks()
    seen: list[FunctionCacheMiss] = []
    hooks.subscribe(FunctionCacheMiss, seen.append)
    set_default_backend(backend, hooks=hooks)

    @cached(ttl=60)
    async def load() -> int:
        return 5

    await load()
    assert (1, 1) == (backend.stats().entries, len(seen))


async def test_default_backend_can_change_after_decoration(manual_clock: ManualClock) -> None:
    """A function decorated at import uses the backend set later at startup."""

    @cached(ttl=60)
    async def load() -> int:
        return 5

    await load()
    backend = MemoryCacheBackend(clock=manual_clock)
    set_default_backend(backend)
    await load()
    assert 1 == backend.stats().entries


async def test_methods_can_be_cached(memory_backend: MemoryCacheBackend) -> None:
    """On a method, the instance is passed through; exclude it to share entries across them."""
    calls = Calls()

    class Service:
        @cached(ttl=60, backend=memory_backend, exclude=["self"])
        async def load(self, x: int) -> int:
            calls.runs.append(x)
            return x

    service = Service()
    results = [await service.load(1), await Service().load(1)]
    existed = await service.load.invalidate(1)
    results.append(await Service().load(x=1))
    assert ([1, 1, 1], [1, 1], True) == (results, calls.runs, existed)
    assert service.load.key(1) == Service.load.key(service, 1)


def test_the_wrapper_looks_like_the_function() -> None:
    """Name, docstring and signature are the function's; the key leaves injected ones out."""

    @cached(ttl=60)
    async def album(album_id: int, request: Request) -> int:
        """Load an album."""
        return album_id

    assert ("album", "Load an album.", frozenset({"request"})) == (
        album.__name__,
        album.__doc__,
        album.excluded,
    )
    assert isinstance(album, CachedFunction)


def test_decoration_refuses_bad_options() -> None:
    """Sync functions, bad TTLs and unknown tag placeholders fail when decorating."""

    def sync() -> int:
        return 1

    async def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="async function"):
        cached(ttl=60)(sync)  # type: ignore[arg-type]
    bad: list[dict[str, Any]] = [{"ttl": 0}, {"ttl": -5}, {"ttl": 60, "local_ttl": 0}]
    for options in bad:
        with pytest.raises(ConfigurationError, match="ttl"):
            cached(**options)(f)
    with pytest.raises(ConfigurationError, match="album_id"):
        cached(ttl=60, tags=["album:{album_id}"])(f)
    with pytest.raises(ConfigurationError, match="list of tags"):
        cached(ttl=60, tags="albums")(f)


# ------------------------------------------------------------------------------------- FastAPI


async def get_session() -> AsyncIterator[AsyncSession]:
    """A per-request database session, as FastAPI apps declare it."""
    async with AsyncSession() as session:
        yield session


class User(BaseModel):
    """Who is calling."""

    name: str


def current_user(request: Request) -> User:
    """A per-request dependency that identifies the caller."""
    return User(name=request.headers.get("x-user", "anonymous"))


async def test_fastapi_injected_objects_stay_out_of_the_key(
    memory_backend: MemoryCacheBackend,
) -> None:
    """A service function called with a fresh session and request per request caches by id."""
    calls = Calls()

    @cached(ttl=60, backend=memory_backend)
    async def album_title(album_id: int, request: Request, session: AsyncSession) -> str:
        calls.runs.append(album_id)
        return f"album {album_id}"

    app = FastAPI()

    @app.get("/albums/{album_id}")
    async def endpoint(
        album_id: int, request: Request, session: Annotated[AsyncSession, Depends(get_session)]
    ) -> dict[str, str]:
        return {"title": await album_title(album_id, request, session)}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        bodies = [(await client.get(f"/albums/{i}")).json() for i in (1, 1, 2, 1)]
    assert ([1, 2], {"title": "album 1"}) == (calls.runs, bodies[3])


async def test_the_current_user_is_part_of_the_key(memory_backend: MemoryCacheBackend) -> None:
    """A dependency that identifies the caller keeps entries apart: no user sees another's."""
    calls = Calls()
    app = FastAPI()

    @app.get("/me/orders")
    @cached(ttl=60, backend=memory_backend)
    async def orders(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        calls.runs.append(user.name)
        return {"orders of": user.name}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        bodies = [
            (await client.get("/me/orders", headers={"x-user": name})).json()
            for name in ("ann", "bob", "ann")
        ]
    assert (["ann", "bob"], ["ann", "bob", "ann"]) == (
        calls.runs,
        [body["orders of"] for body in bodies],
    )


async def test_a_cached_endpoint_keeps_its_signature_for_fastapi(
    memory_backend: MemoryCacheBackend,
) -> None:
    """FastAPI reads the wrapped signature: parameters are validated and injected as usual."""
    calls = Calls()
    app = FastAPI()

    @app.get("/tracks/{track_id}")
    @cached(ttl=60, backend=memory_backend)
    async def track(track_id: int, request: Request, q: str = "") -> dict[str, object]:
        calls.runs.append(track_id)
        return {"id": track_id, "q": q, "path": request.url.path}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.get("/tracks/3?q=x")
        second = await client.get("/tracks/3?q=x")
        invalid = await client.get("/tracks/not-a-number")
    assert (200, first.json(), 1, 422) == (
        second.status_code,
        second.json(),
        len(calls),
        invalid.status_code,
    )


# ---------------------------------------------------------------------------------------- outage


@pytest.mark.redis
async def test_unreachable_store_runs_the_function_uncached(
    dead_backend: CacheBackend, recorder: Recorder
) -> None:
    """With Redis unreachable every call still returns, the function runs, failures are events."""
    calls = Calls()

    @cached(ttl=60, backend=dead_backend, hooks=recorder.hooks, tags=["t"])
    async def load(x: int) -> int:
        calls.runs.append(x)
        return x

    results = [await load(1), await load(1)]
    operations = {event.operation for event in recorder.of(CacheStoreFailure)}  # type: ignore[attr-defined]
    assert ([1, 1], 2) == (results, len(calls))
    assert {"get", "lock", "set"} <= operations


async def test_caching_resumes_when_redis_returns(outage: Outage) -> None:
    """Redis stopped: calls are served uncached, no error; Redis back: caching resumes."""
    calls = Calls()

    @cached(ttl=60, backend=outage.backend)
    async def load(x: int) -> int:
        calls.runs.append(x)
        return x

    await load(1)
    await load(1)
    cached_before = len(calls)
    outage.server.kill()
    during = [await load(1) for _ in range(3)]
    runs_during = len(calls) - cached_before
    outage.server.start()
    outage.clock.advance(1.0)
    await load(1)  # the probe succeeds; Redis is empty after the restart: one more run
    runs_after_restart = len(calls)
    await load(1)
    await load(1)
    assert (1, [1, 1, 1], 3, "closed") == (cached_before, during, runs_during, outage.gate.state)
    assert runs_after_restart == len(calls)
