"""``CommandBatcher``: the commands of one event-loop turn share one pipeline, each keeps its own
outcome. Against real Redis servers (a dedicated one where the test flushes or kills it)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis.exceptions
from redis.asyncio import Redis

from bastion.stores._batch import CommandBatcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.conftest import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

_ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def client(redis_url: str, anyio_backend: str) -> AsyncIterator[Redis]:
    """A client on the shared server; the test's keys are deleted afterwards."""
    async with Redis.from_url(redis_url) as connection:
        yield connection


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return f"bastion-test-{uuid.uuid4().hex}"


def count_checkouts(client: Redis) -> list[int]:
    """Count the connections taken from ``client``'s pool (one per round trip sent)."""
    pool = client.connection_pool
    original = pool.get_connection
    taken = [0]

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        taken[0] += 1
        return await original(*args, **kwargs)  # type: ignore[no-untyped-call]

    pool.get_connection = get_connection  # type: ignore[method-assign]
    return taken


async def test_concurrent_commands_share_one_pipeline(client: Redis, key: str) -> None:
    """Fifty concurrent INCRs leave as one pipeline, and each gets its own reply."""
    batcher = CommandBatcher(client)
    taken = count_checkouts(client)
    try:
        replies = await asyncio.gather(*(batcher.execute("INCR", key) for _ in range(50)))
        sent = taken[0]
    finally:
        await client.delete(key)
    assert (list(range(1, 51)), 1) == (sorted(replies), sent)


async def test_a_lone_command_goes_out_alone(client: Redis, key: str) -> None:
    """Without concurrency a command is sent as it is, one round trip."""
    batcher = CommandBatcher(client)
    taken = count_checkouts(client)
    try:
        assert True is await batcher.execute("SET", key, b"v")  # redis-py maps OK to True
        assert b"v" == await batcher.execute("GET", key)
        sent = taken[0]
    finally:
        await client.delete(key)
    assert 2 == sent


async def test_a_failing_command_fails_only_its_caller(client: Redis, key: str) -> None:
    """A WRONGTYPE reply raises in its own caller; the rest of the batch succeeds."""
    batcher = CommandBatcher(client)
    await client.set(key, b"text")
    try:
        results = await asyncio.gather(
            batcher.execute("GET", key),
            batcher.execute("LPUSH", key, b"x"),
            batcher.execute("STRLEN", key),
            return_exceptions=True,
        )
    finally:
        await client.delete(key)
    assert b"text" == results[0]
    assert isinstance(results[1], redis.exceptions.ResponseError)
    assert 4 == results[2]


async def test_a_script_flushed_from_the_server_is_loaded_again(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """After SCRIPT FLUSH, batched and lone script calls reload the script and succeed."""
    server = redis_server_factory()
    async with Redis.from_url(server.url) as client:
        script = client.register_script(_ECHO)
        batcher = CommandBatcher(client)
        assert [b"k", b"1"] == await batcher.script(script, ["k"], [1])
        await client.script_flush()
        batched = await asyncio.gather(*(batcher.script(script, ["k"], [n]) for n in range(3)))
        await client.script_flush()
        lone = await batcher.script(script, ["k"], [9])
    assert [[b"k", b"0"], [b"k", b"1"], [b"k", b"2"]] == batched
    assert [b"k", b"9"] == lone


async def test_a_cancelled_caller_does_not_disturb_the_batch(client: Redis, key: str) -> None:
    """A caller cancelled while its batch is out is skipped; the others get their replies."""
    batcher = CommandBatcher(client)
    try:
        tasks = [asyncio.create_task(batcher.execute("INCR", key)) for _ in range(5)]
        await asyncio.sleep(0)  # every task queued its command; the batch leaves next turn
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        stored = int(await client.get(key) or 0)
    finally:
        await client.delete(key)
    assert isinstance(results[2], asyncio.CancelledError)
    # Commands run in the order they were queued: the cancelled third one got (and lost) 3.
    assert [1, 2, 4, 5] == [results[i] for i in (0, 1, 3, 4)]
    assert 5 == stored  # the cancelled caller's command had already left: Redis ran it


async def test_a_connection_failure_reaches_every_caller(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """With the server gone, every caller of the batch gets the connection error."""
    server = redis_server_factory()
    async with Redis.from_url(server.url, socket_connect_timeout=0.5) as client:
        batcher = CommandBatcher(client)
        await batcher.execute("PING")
        server.kill()
        results = await asyncio.gather(
            *(batcher.execute("PING") for _ in range(4)), return_exceptions=True
        )
    assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results), results


async def test_a_turn_larger_than_max_batch_is_split(client: Redis, key: str) -> None:
    """More commands than ``max_batch`` in one turn leave as several pipelines."""
    batcher = CommandBatcher(client, max_batch=8)
    taken = count_checkouts(client)
    try:
        replies = await asyncio.gather(*(batcher.execute("INCR", key) for _ in range(20)))
        sent = taken[0]
    finally:
        await client.delete(key)
    assert (list(range(1, 21)), 3) == (sorted(replies), sent)


async def test_a_leader_cancelled_before_sending_still_sends_the_others(
    client: Redis, key: str
) -> None:
    """The first caller of a turn leads the batch; cancelled before it leaves, the rest go."""
    batcher = CommandBatcher(client)
    leader = asyncio.create_task(batcher.execute("INCR", key))
    followers = [asyncio.create_task(batcher.execute("INCR", key)) for _ in range(3)]
    await asyncio.sleep(0)  # the leader waits its turn; the followers have joined it
    leader.cancel()
    try:
        results = await asyncio.gather(leader, *followers, return_exceptions=True)
        stored = int(await client.get(key) or 0)
    finally:
        await client.delete(key)
    assert isinstance(results[0], asyncio.CancelledError)
    assert ([1, 2, 3], 3) == (sorted(results[1:]), stored)  # type: ignore[type-var]
