"""Two worker processes sharing a real Redis: a revoked key is refused by both within a second.

The workers are real uvicorn servers; the key is created and revoked from this process, as the
``bastion keys`` command would. Wall-clock time is the property under test here, so the test
polls instead of injecting a clock.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from bastion.auth import ApiKeys
from bastion.stores.redis import RedisStore
from tests.servers import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = "tests.auth.server_app:app"
CACHE_S = 1.0


async def test_a_revoked_key_is_refused_by_every_worker_within_a_second(redis_url: str) -> None:
    """Both workers accept the key and cache it; after revoke(), every request that starts one
    second later or more is a 401, on both workers."""
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("BASTION_")}
    env.update(
        BASTION_REDIS_URL=redis_url,
        BASTION_STORES__KEY_PREFIX=prefix,
        BASTION_AUTH__ENABLED="true",
        BASTION_AUTH__REQUIRE='["/me"]',
        BASTION_AUTH__CACHE_S=str(CACHE_S),
        BASTION_LOGGING__CONFIGURE="false",
        BASTION_METRICS__ENABLED="false",
    )
    store = RedisStore.from_url(redis_url, prefix=prefix)
    keys = ApiKeys(store)
    try:
        with serve(APP, env=env) as (first, _), serve(APP, env=env) as (second, _):
            new = await keys.create("shared", scopes=["catalog:write"])
            headers = {"x-api-key": new.key}
            async with httpx.AsyncClient(headers=headers, timeout=5) as client:
                warm = [await client.get(f"{url}/me") for url in (first, second)]
                await keys.revoke(new.record.id)
                revoked_at = time.monotonic()
                seen: dict[str, list[tuple[float, int]]] = {first: [], second: []}
                while time.monotonic() - revoked_at < 2 * CACHE_S:
                    for url in (first, second):
                        started = time.monotonic() - revoked_at
                        status = (await client.get(f"{url}/me")).status_code
                        seen[url].append((started, status))
                    await asyncio.sleep(0.02)
    finally:
        await store.aclose()
        async with Redis.from_url(redis_url) as admin:
            leftovers = [key async for key in admin.scan_iter(match=f"{prefix}:*")]
            if leftovers:
                await admin.unlink(*leftovers)
    assert [(200, f"key:{new.record.id}")] * 2 == [
        (response.status_code, response.json()["principal"]) for response in warm
    ]
    assert len({response.json()["pid"] for response in warm}) == 2  # two processes answered
    for url, results in seen.items():
        late = [status for started, status in results if started >= CACHE_S]
        assert {401} == set(late), url  # non-empty: the polling ran well past the second
