"""The response cache under a real ``uvicorn --workers 2`` sharing one Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.servers import serve

pytestmark = [pytest.mark.slow, pytest.mark.redis]

CONNECTIONS = 500


@pytest.fixture
def two_workers(
    redis_url: str, tmp_path: Path
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """``uvicorn --workers 2`` serving tests/servers/cache_app.py on the test Redis.

    Yields the URL, the Redis key counting handler runs, and the server process.
    """
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    counter = f"{prefix}:runs"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    environment.update(
        {
            "BASTION_REDIS_URL": redis_url,
            "BASTION_STORES__KEY_PREFIX": prefix,
            "BASTION_LOGGING__ACCESS_LOG": "false",
            "CACHE_APP_COUNTER": counter,
            # A shared 2-core machine under load can stall a worker for seconds: the waiters'
            # bound must not be what the test measures (it is what caps a dead leader's delay).
            "BASTION_CACHE__WAIT_S": "60",
            "BASTION_CACHE__LOCK_TTL_S": "60",
        }
    )
    arguments = ("--workers", "2", "--log-level", "warning", "--backlog", "2048")
    try:
        with serve(
            "tests.servers.cache_app:app",
            arguments=arguments,
            env=environment,
            log=tmp_path / "log",
        ) as (url, process):
            yield url, counter, process
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


async def spread_connections(client: httpx.AsyncClient, url: str) -> set[str]:
    """Open ``CONNECTIONS`` keep-alive connections at once; the worker pids they reached."""
    responses = await asyncio.gather(*(client.get(f"{url}/pid") for _ in range(CONNECTIONS)))
    return {r.headers["x-worker-pid"] for r in responses}


def test_500_concurrent_misses_on_two_workers_run_the_handler_once(
    two_workers: tuple[str, str, subprocess.Popen[bytes]], redis_url: str
) -> None:
    """500 concurrent requests for a cold key, over connections to both workers: one run."""
    url, counter, _ = two_workers
    key = uuid.uuid4().hex

    async def scenario() -> tuple[set[str], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        # The kernel hands accepted connections to either worker; on a busy machine one worker
        # may take a whole burst. A fresh pool of connections, a few times, spreads them.
        for _attempt in range(5):
            async with httpx.AsyncClient(limits=limits, timeout=60) as client:
                workers = await spread_connections(client, url)
                if len(workers) < 2:
                    continue
                responses = await asyncio.gather(
                    *(client.get(f"{url}/cold", params={"key": key}) for _ in range(CONNECTIONS))
                )
                return workers, list(responses)
        return workers, []

    workers, responses = asyncio.run(scenario())

    runs = redis.Redis.from_url(redis_url)
    try:
        counted = runs.get(counter)
    finally:
        runs.close()
    statuses = Counter(r.headers.get("cache-status") for r in responses)
    assert 2 == len(workers), "every connection reached the same worker"
    assert [200] * CONNECTIONS == [r.status_code for r in responses]
    assert 2 == len({r.headers["x-worker-pid"] for r in responses})
    assert {f'{{"key":"{key}"}}'.encode()} == {r.content for r in responses}
    assert b"1" == counted, f"handler runs: {counted!r}; Cache-Status: {dict(statuses)}"


def test_two_workers_give_the_same_content_the_same_etag(
    two_workers: tuple[str, str, subprocess.Popen[bytes]],
) -> None:
    """The ETag is a content hash: both workers, computing it on their own, agree; 304 works."""
    url, _, _ = two_workers
    etags: dict[str, str] = {}
    for _ in range(200):
        with httpx.Client() as client:  # a new connection lets the kernel pick a worker
            response = client.get(f"{url}/same", timeout=10)
        etags[response.headers["x-worker-pid"]] = response.headers["etag"]
        if len(etags) == 2:
            break

    assert 2 == len(etags), "every connection reached the same worker"
    assert 1 == len(set(etags.values()))
    with httpx.Client() as client:
        not_modified = client.get(
            f"{url}/same", headers={"if-none-match": next(iter(etags.values()))}, timeout=10
        )
    assert (304, b"") == (not_modified.status_code, not_modified.content)
