"""``@cached`` under ``Bastion(app)``: its backend, its events and its metrics by default."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion.cache import MemoryCacheBackend, cached, default_backend
from bastion.exceptions import ConfigurationError
from bastion.settings import load_settings
from tests.asgi import client_for

pytestmark = pytest.mark.anyio


@cached(ttl=60, tags=["albums"], name="albums.count")
async def album_count(genre: str) -> int:
    """A service function decorated at import time, before any Bastion exists."""
    runs.append(genre)
    return len(genre)


runs: list[str] = []


def make_app(**overrides: object) -> tuple[FastAPI, Bastion]:
    """A FastAPI app under Bastion whose route calls the cached function."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, **overrides))  # type: ignore[arg-type]

    @app.get("/count/{genre}")
    async def count(genre: str) -> dict[str, int]:
        return {"count": await album_count(genre)}

    @app.post("/albums")
    async def add() -> dict[str, bool]:
        await bastion.cache_purge("albums")
        return {"added": True}

    return app, bastion


async def test_cached_functions_use_bastions_backend_and_metrics() -> None:
    """Without backend=, calls go to Bastion's cache backend and are counted in its metrics."""
    runs.clear()
    app, bastion = make_app()
    async with client_for(app) as client:
        bodies = [(await client.get(f"/count/{genre}")).json() for genre in ("jazz", "jazz")]
        await client.post("/albums")
        await client.get("/count/jazz")
        metrics = (await client.get("/_bastion/metrics")).text
    hit = 'bastion_cache_function_calls_total{function="albums.count",result="hit",source="memory"}'
    ran = 'bastion_cache_function_calls_total{function="albums.count",result="miss",source="ran"}'
    assert ([{"count": 4}] * 2, ["jazz", "jazz"]) == (bodies, runs)
    assert bastion.cache_backend is default_backend()
    assert f"{hit} 1" in metrics
    assert f"{ran} 2" in metrics
    assert "bastion_cache_function_duration_seconds_bucket" in metrics


@pytest.mark.redis
async def test_with_a_redis_url_cached_functions_share_redis(redis_url: str) -> None:
    """BASTION_REDIS_URL: the default backend is Redis, under bastion's key prefix."""
    runs.clear()
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    app, bastion = make_app(redis_url=redis_url, stores={"key_prefix": prefix})
    async with client_for(app) as client:
        await client.get("/count/blues")
        await client.get("/count/blues")
        metrics = (await client.get("/_bastion/metrics")).text
        store = bastion.store
        keys = [key async for key in store.client.scan_iter(f"{prefix}:*")]  # type: ignore[attr-defined]
        await store.client.delete(*keys)  # type: ignore[attr-defined]
    hit = 'bastion_cache_function_calls_total{function="albums.count",result="hit",source="redis"}'
    assert (["blues"], "redis") == (runs, default_backend().name)
    assert f"{hit} 1" in metrics


@pytest.mark.usefixtures("isolated_env")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BASTION_CACHE__MAX_TTL_S", "0"),
        ("BASTION_CACHE__MAX_TTL_S", "inf"),
        ("BASTION_CACHE__COMPRESS_MIN_BYTES", "-1"),
    ],
)
def test_invalid_cache_storage_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad storage setting fails at startup with a message naming its variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


@pytest.mark.usefixtures("isolated_env")
async def test_storage_settings_reach_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """BASTION_CACHE__MAX_TTL_S caps every entry of the backend Bastion builds."""
    monkeypatch.setenv("BASTION_CACHE__MAX_TTL_S", "120")
    bastion = Bastion(FastAPI())
    backend = bastion.cache_backend
    assert isinstance(backend, MemoryCacheBackend)
    assert 120.0 == backend.max_ttl_s
