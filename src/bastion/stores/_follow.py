"""Following a Redis pub/sub channel for the life of a process.

Features that tell every worker about a change (cache invalidations, the abuse guard's bans)
each hold one pub/sub connection. Two ways it can fail:

- **It breaks**: Redis restarts, the connection is reset. redis-py raises; the follower
  resubscribes with a growing delay.
- **It goes silent**: a NAT or load balancer dropped an idle connection, a network partition, a
  host that vanished without a FIN. Nothing raises: reads just time out, as they do on a quiet
  channel, while the other workers' messages go nowhere. The follower tells the two apart by
  sending ``PING`` after ``ping_interval_s`` without any message; a link that leaves the ping
  unanswered for another ``ping_interval_s`` is treated as broken, and the follower resubscribes
  on a new connection.

A message published while the link was down is lost (pub/sub does not queue): ``on_lost`` is
where a feature makes up for it (the cache drops its local copies; the guard re-reads the
active bans once subscribed again, in ``on_subscribed``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bastion._clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["SilentLinkError", "follow_channel"]

DEFAULT_PING_INTERVAL_S = 15.0
"""Silence after which a follower checks its link with ``PING`` (and how long it waits for the
answer). Below the idle timeouts of common NATs and load balancers (350 s on AWS NLB, 4 min on
Azure), so an idle link is kept alive as well as checked."""


class SilentLinkError(ConnectionError):
    """The pub/sub connection did not answer a ``PING``: treated as broken."""


async def follow_channel(
    client: Redis,
    channel: str,
    on_message: Callable[[bytes], None],
    *,
    on_subscribed: Callable[[], Awaitable[None] | None] | None = None,
    on_lost: Callable[[BaseException], None] | None = None,
    active: Callable[[], bool] = lambda: True,
    ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
    retry_min_s: float = 0.5,
    retry_max_s: float = 30.0,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Call ``on_message`` with every message published on ``channel``, until cancelled.

    Args:
        client: the Redis client whose pool gives the pub/sub connection.
        channel: the channel to follow.
        on_message: called with each message's data, on the event loop.
        on_subscribed: called once the server confirmed each (re)subscription; awaited if it
            returns an awaitable. A snapshot read here misses nothing: messages published from
            now on are delivered.
        on_lost: called with the error when a confirmed subscription breaks or goes silent.
        active: checked between messages; the follower returns once it is false.
        ping_interval_s: see the module docstring.
        retry_min_s: delay before the first resubscription; doubled after each failure.
        retry_max_s: the longest delay between two resubscriptions.
        clock: measures silence.
    """
    # Reads wait at most this long, so silence and ``active()`` are checked often enough.
    poll_s = min(1.0, ping_interval_s / 4)
    delay_s = retry_min_s
    task = asyncio.current_task()
    while active():
        pubsub = client.pubsub()
        subscribed = False
        try:
            await pubsub.subscribe(channel)
            heard = clock.monotonic()
            pinged_at: float | None = None
            while active():
                _raise_if_cancelled(task)
                message: dict[str, Any] | None = await pubsub.get_message(timeout=poll_s)
                now = clock.monotonic()
                if message is not None:
                    heard, pinged_at = now, None
                    kind = message["type"]
                    if kind == "message":
                        on_message(message["data"])
                    elif kind == "subscribe" and not subscribed:
                        subscribed = True
                        delay_s = retry_min_s
                        if on_subscribed is not None:
                            pending = on_subscribed()
                            if pending is not None:
                                await pending
                    continue
                if pinged_at is None:
                    if now - heard >= ping_interval_s:
                        await pubsub.ping()
                        pinged_at = now
                elif now - pinged_at >= ping_interval_s:
                    raise SilentLinkError(
                        f"no answer to PING on {channel!r} within {ping_interval_s:g} s"
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis and socket errors, a silent link: resubscribe
            _raise_if_cancelled(task)  # a cancellation redis-py turned into an error
            if subscribed and on_lost is not None:
                on_lost(exc)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        if not active():
            return
        _raise_if_cancelled(task)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, retry_max_s)


def _raise_if_cancelled(task: asyncio.Task[Any] | None) -> None:
    """Raise ``CancelledError`` if ``task`` was asked to stop.

    A cancellation that lands inside a redis-py read can come out as a connection error, or as
    nothing at all; the request to stop is still counted on the task (``cancelling()``), and
    this makes the follower honour it instead of resubscribing forever.
    """
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
