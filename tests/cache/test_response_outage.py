"""Redis stopped under the response cache: requests are served uncached, never a 500; caching
resumes by itself once Redis answers again.

The store's health gate runs on a ManualClock, so the test decides when the gate lets a probe
through after Redis is back; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from bastion._clock import ManualClock
from bastion.cache import RedisCacheBackend
from bastion.events import CacheStoreFailure
from bastion.stores.redis import RedisStore
from tests.cache.conftest import Recorder
from tests.cache.responses import CountedApp, client_for
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio

GATE_DELAY_S = 5.0


async def test_redis_down_serves_uncached_and_caching_resumes(
    redis_server_factory: Callable[..., RedisServer],
    manual_clock: ManualClock,
    recorder: Recorder,
) -> None:
    """Before: hits. During: every request answered by the handler, writes too. After: hits."""
    server = redis_server_factory()
    gate_clock = ManualClock()
    store = RedisStore.from_url(server.url, base_delay_s=GATE_DELAY_S, clock=gate_clock)
    backend = RedisCacheBackend(store.with_namespace("cache"), hooks=recorder.hooks)
    counted = CountedApp()
    try:
        async with client_for(counted, backend, manual_clock, hooks=recorder.hooks) as client:
            before = [await client.get("/albums") for _ in range(3)]
            server.kill()
            during = [await client.get("/albums") for _ in range(10)]
            write = await client.post("/albums")  # its purge fails: the write still succeeds
            server.start()  # empty: the entries died with the server
            gate_clock.advance(GATE_DELAY_S)
            after = [await client.get("/albums") for _ in range(3)]
    finally:
        await store.aclose()

    assert ["fwd=miss", "hit", "hit"] == [status(r) for r in before]
    assert [200] * 10 == [r.status_code for r in during]
    assert {"bastion; fwd=miss; detail=store-unavailable"} == {
        r.headers["cache-status"] for r in during
    }
    assert ["fwd=miss", "hit", "hit"] == [status(r) for r in after]
    assert 1 + 10 + 1 == counted.runs["albums"]
    assert 200 == write.status_code
    failures = [e for e in recorder.events if isinstance(e, CacheStoreFailure)]
    assert {("redis", "get"), ("redis", "purge")} == {(e.backend, e.operation) for e in failures}


def status(response: httpx.Response) -> str:
    """The second parameter of a response's Cache-Status (``hit``, ``fwd=miss``...)."""
    return response.headers["cache-status"].split("; ")[1]
