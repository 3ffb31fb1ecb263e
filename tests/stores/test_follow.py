"""Following a pub/sub channel: messages, resubscription after a restart, and a silent link.

A link that goes silent (a NAT that forgot an idle connection, a partition) is simulated by a TCP
proxy between the follower and a real Redis that stops forwarding the bytes of the connections it
already has, without closing them: nothing raises on the follower's side, exactly as in the real
failure. Connections made afterwards are forwarded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from bastion.stores import SilentLinkError, follow_channel
from bastion.stores.redis import RedisStore
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio

_FAST = {"ping_interval_s": 0.2, "retry_min_s": 0.05, "retry_max_s": 0.2}


class SilencingProxy:
    """Forwards TCP connections to ``host:port``; ``silence()`` mutes the ones open now."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._links: list[dict[str, bool]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def silence(self) -> None:
        """The connections open now stop carrying bytes, both ways, and stay open."""
        for link in self._links:
            link["silent"] = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        link = {"silent": False}
        self._links.append(link)
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: dict[str, bool]
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                if not link["silent"]:
                    sink.write(data)
                    await sink.drain()
        sink.close()


class Recorder:
    """What a follower reported, and a way to wait for it."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.subscriptions = 0
        self.lost: list[BaseException] = []

    def on_message(self, data: bytes) -> None:
        self.messages.append(data)

    def on_subscribed(self) -> None:
        self.subscriptions += 1

    def on_lost(self, exc: BaseException) -> None:
        self.lost.append(exc)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (the follower works on real sockets and real time)."""
    await wait_until(condition, 5.0, interval_s=0.01)


@contextlib.asynccontextmanager
async def following(
    store: RedisStore, channel: str, recorder: Recorder, **options: float
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(
        follow_channel(
            store.client,
            channel,
            recorder.on_message,
            on_subscribed=recorder.on_subscribed,
            on_lost=recorder.on_lost,
            **options,  # type: ignore[arg-type]
        )
    )
    try:
        yield task
    finally:
        task.cancel()
        # Bounded: a follower that ignored its cancellation fails the test instead of hanging.
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the follower did not stop when cancelled"


async def publish_until(
    publisher: Redis, channel: str, data: bytes, received: Callable[[], bool]
) -> None:
    """Publish ``data`` until it arrived (a resubscription may still be on its way)."""

    async def keep_publishing() -> None:
        while not received():
            await publisher.publish(channel, data)
            await asyncio.sleep(0.05)

    await asyncio.wait_for(keep_publishing(), timeout=5)


async def test_messages_published_after_the_confirmed_subscription_arrive(redis_url: str) -> None:
    """on_subscribed runs once the server confirmed; every message published after it arrives."""
    channel = f"bastion-test:{uuid.uuid4().hex}"
    recorder = Recorder()
    async with (
        RedisStore.from_url(redis_url) as store,
        Redis.from_url(redis_url) as publisher,
        following(store, channel, recorder),
    ):
        await eventually(lambda: recorder.subscriptions == 1)
        for index in range(3):
            await publisher.publish(channel, f"m{index}")
        await eventually(lambda: len(recorder.messages) == 3)
    assert ([b"m0", b"m1", b"m2"], []) == (recorder.messages, recorder.lost)


async def test_a_quiet_healthy_link_is_kept(redis_url: str) -> None:
    """No message for many ping intervals: the server answers the pings, nothing is lost."""
    channel = f"bastion-test:{uuid.uuid4().hex}"
    recorder = Recorder()
    async with (
        RedisStore.from_url(redis_url) as store,
        following(store, channel, recorder, **_FAST),
    ):
        await eventually(lambda: recorder.subscriptions == 1)
        await asyncio.sleep(1.0)  # five ping intervals of silence on the channel
    assert (1, []) == (recorder.subscriptions, recorder.lost)


async def test_a_silent_link_is_noticed_and_replaced(redis_url: str) -> None:
    """A connection that stops carrying bytes without closing is found out by an unanswered
    PING; the follower subscribes again on a new connection and messages flow again."""
    target = urlsplit(redis_url)
    proxy = SilencingProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    channel = f"bastion-test:{uuid.uuid4().hex}"
    recorder = Recorder()
    try:
        async with (
            RedisStore.from_url(proxy.url) as store,
            Redis.from_url(redis_url) as publisher,
            following(store, channel, recorder, **_FAST),
        ):
            await eventually(lambda: recorder.subscriptions == 1)
            proxy.silence()
            await publisher.publish(channel, b"lost")  # goes nowhere: the link is mute
            await eventually(lambda: bool(recorder.lost))
            await eventually(lambda: recorder.subscriptions == 2)
            await publish_until(publisher, channel, b"after", lambda: b"after" in recorder.messages)
    finally:
        await proxy.close()
    assert b"lost" not in recorder.messages
    assert isinstance(recorder.lost[0], SilentLinkError)


async def test_a_restarted_server_is_followed_again(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """The server is killed and started again on its port: the follower reports the loss,
    resubscribes by itself, and receives what is published afterwards."""
    server = redis_server_factory()
    channel = "bastion-test:restart"
    recorder = Recorder()
    async with (
        RedisStore.from_url(server.url) as store,
        following(store, channel, recorder, **_FAST),
    ):
        await eventually(lambda: recorder.subscriptions == 1)
        server.kill()
        await eventually(lambda: bool(recorder.lost))
        server.start()
        await eventually(lambda: recorder.subscriptions == 2)
        async with Redis.from_url(server.url) as publisher:
            await publish_until(publisher, channel, b"back", lambda: b"back" in recorder.messages)


async def test_the_follower_returns_once_it_is_no_longer_active(redis_url: str) -> None:
    """``active()`` turning false ends the follower without cancelling it."""
    channel = f"bastion-test:{uuid.uuid4().hex}"
    recorder = Recorder()
    running = True
    async with RedisStore.from_url(redis_url) as store:
        task: Awaitable[None] = asyncio.create_task(
            follow_channel(
                store.client,
                channel,
                recorder.on_message,
                on_subscribed=recorder.on_subscribed,
                active=lambda: running,
                ping_interval_s=0.2,
            )
        )
        await eventually(lambda: recorder.subscriptions == 1)
        running = False
        await asyncio.wait_for(task, timeout=2)
