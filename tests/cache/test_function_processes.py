"""``@cached`` across real processes sharing Redis: single-flight and local-level invalidation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from bastion.cache import RedisCacheBackend, cached, purge
from bastion.stores.redis import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]

WORKER = "tests.cache.function_worker"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"bastion-test-{uuid.uuid4().hex}"


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    """The parent's store on the shared prefix; every key under it is deleted afterwards."""
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        yield store
    finally:
        keys = [key async for key in store.client.scan_iter(f"{prefix}:*")]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()


def start_worker(mode: str, redis_url: str, prefix: str, **extra: str) -> subprocess.Popen[str]:
    """Start one worker process in ``mode``."""
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
        "MODE": mode,
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", WORKER],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes of the test; killed afterwards if still running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


async def readline(process: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    """One line of a worker's output, without blocking the event loop."""
    assert process.stdout is not None
    return await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout_s)


def send(process: subprocess.Popen[str], line: str) -> None:
    """Write one line to a worker."""
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


async def test_500_calls_across_two_processes_run_the_function_once(
    redis_url: str, prefix: str, store: RedisStore, workers: list[subprocess.Popen[str]]
) -> None:
    """Two processes, 250 concurrent calls each, one cold key: the function runs once in all."""
    workers.extend(start_worker("flight", redis_url, prefix, CALLS="250") for _ in range(2))
    assert ["ready", "ready"] == [(await readline(worker)).strip() for worker in workers]
    for worker in workers:
        send(worker, "go")
    results = [orjson.loads(await readline(worker)) for worker in workers]
    runs = int(await store.client.get(f"{prefix}:runs") or 0)
    values = {orjson.dumps(result) for process_results in results for result in process_results}
    assert (1, 500, 1) == (runs, sum(len(result) for result in results), len(values))


async def test_local_copies_in_another_process_follow_invalidations(
    redis_url: str, prefix: str, store: RedisStore, workers: list[subprocess.Popen[str]]
) -> None:
    """A process holding a row locally sees it change after this process invalidates or purges."""
    row = f"{prefix}:row"
    await store.client.set(row, "v1")
    backend = RedisCacheBackend(store.with_namespace("cache"))

    @cached(ttl=60, backend=backend, name="rows.read", tags=["rows"])
    async def read(row_id: int) -> str:
        value = await store.client.get(row)
        return value.decode() if isinstance(value, bytes) else ""

    # Stored (and its invalidation published) before the worker subscribes: published after,
    # the message could land between the worker's first and second read and drop its copy.
    await read(1)
    worker = start_worker("local", redis_url, prefix)
    workers.append(worker)
    assert "ready" == (await readline(worker)).strip()

    async def worker_reads() -> tuple[str, str | None]:
        send(worker, "read")
        value, level = orjson.loads(await readline(worker))
        return value, level

    async def worker_reads_until(expected: str) -> tuple[str, str | None]:
        for _ in range(100):
            seen = await worker_reads()
            if seen[0] == expected:
                return seen
            await asyncio.sleep(0.02)
        return seen

    try:
        first = await worker_reads()
        held = await worker_reads()
        await store.client.set(row, "v2")
        stale = await worker_reads()
        await read.invalidate(1)
        after_invalidate = await worker_reads_until("v2")
        await store.client.set(row, "v3")
        await purge("rows", backend=backend)
        after_purge = await worker_reads_until("v3")
    finally:
        await backend.aclose()
    assert [("v1", "redis"), ("v1", "local"), ("v1", "local")] == [first, held, stale]
    assert (("v2", None), ("v3", None)) == (after_invalidate, after_purge)
