"""``RedisCacheBackend``: cache entries in Redis, one round trip per lookup, tags checked inside.

Built on a ``RedisStore``: its client, its key prefix and its health gate, so an outage fails
fast here exactly as it does for the store, and heals by itself when the gate's probe succeeds.
Every script ships as package data (``lua/``) and is registered with ``register_script`` (sent by
SHA1, reloaded after ``NOSCRIPT``).

Layout under the store's prefix ``P`` (``bastion:cache:`` by default)::

    P{P}:e:<key>    hash: "d" -> value, "t<tag>" -> the tag's version when written   (PX ttl)
    P{P}:t:<tag>    the tag's version                                        (PX max_ttl_s)
    P{P}:v          the version counter
    P{P}:l:<key>    single-flight lock: the holder's token, or "" (unshared)     (PX lock ttl)
    P{P}:invalidate the pub/sub channel: every set, delete and purge publishes on it, so that
                    local caches in other processes (``@cached(local_ttl_s=...)``) drop copies

The ``{P}`` hash tag puts every key of one cache in one Redis Cluster slot. That is what lets the
lookup script read an entry and its tags' versions together: the tags of an entry are only known
once the entry is read, so they cannot be in another slot. The price, on a cluster, is that one
cache lives on one shard; give services different prefixes to spread them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import orjson

from bastion.cache._backend import (
    DEFAULT_COMPRESS_MIN_BYTES,
    DEFAULT_MAX_TTL_S,
    Invalidation,
    LockState,
    TagSnapshot,
    check_options,
    check_tags,
    check_ttl,
    decode_value,
    encode_value,
)
from bastion.events import CachePurged, CacheStoreFailure
from bastion.stores import follow_channel

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from bastion.events import Hooks
    from bastion.stores.gate import GateGuard
    from bastion.stores.redis import RedisStore

__all__ = ["RedisCacheBackend"]

logger = logging.getLogger("bastion.cache")

_LOCK_STATES: tuple[LockState, ...] = ("acquired", "held", "unshared")
_EVERYTHING = Invalidation(everything=True)
_LISTEN_TIMEOUT_S = 1.0
_RESUBSCRIBE_MIN_S = 0.1
_RESUBSCRIBE_MAX_S = 5.0


def _script(name: str) -> str:
    return resources.files("bastion.cache").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


_GET, _SET, _DELETE, _PURGE, _ACQUIRE, _RELEASE = (
    _script(name) for name in ("get", "set", "delete", "purge", "acquire", "release")
)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisCacheBackend:
    """A ``CacheBackend`` on Redis: shared by every worker and host, atomic through Lua.

    A lookup is one ``EVALSHA`` that reads the entry and checks its tags. A write is one
    ``EVALSHA``; so is a purge of any number of tags, and each lock operation.

    Example::

        store = RedisStore.from_url("redis://localhost:6379/0")
        backend = RedisCacheBackend(store.with_namespace("cache"))

    Args:
        store: the ``RedisStore`` (or a namespaced view) whose client, key prefix and health gate
            are used; failures surface as ``StoreError`` through its gate.
        max_ttl_s: the longest an entry may live; longer TTLs are shortened to it. A purged tag's
            version is kept this long (plus a minute).
        compress_min_bytes: values of at least this size are compressed when it pays.
        hooks: where ``CachePurged`` is published.

    Raises:
        ConfigurationError: if an option is out of range.
    """

    __slots__ = (
        "_acquire",
        "_channel",
        "_compress_min_bytes",
        "_counter",
        "_delete",
        "_entries",
        "_get",
        "_guard",
        "_hooks",
        "_listener",
        "_locks",
        "_max_ttl_s",
        "_origin",
        "_purge",
        "_release",
        "_set",
        "_store",
        "_subscribed",
        "_subscribers",
        "_tag_ms",
        "_tags",
    )

    def __init__(
        self,
        store: RedisStore,
        *,
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
        hooks: Hooks | None = None,
    ) -> None:
        check_options(max_ttl_s=max_ttl_s, compress_min_bytes=compress_min_bytes)
        self._store = store
        self._max_ttl_s = float(max_ttl_s)
        # A tag's version must outlive every entry written before its purge; a minute of margin
        # covers the clock drift between this host and Redis.
        self._tag_ms = _ms(max_ttl_s + 60)
        self._compress_min_bytes = compress_min_bytes
        self._hooks = hooks
        self._guard: GateGuard = store.guard
        prefix = store.key_prefix
        root = f"{prefix}{{{prefix.rstrip(':')}}}:"
        self._entries = root + "e:"
        self._tags = root + "t:"
        self._locks = root + "l:"
        self._counter = root + "v"
        self._channel = root + "invalidate"
        client = store.client
        self._get: AsyncScript = client.register_script(_GET)
        self._set: AsyncScript = client.register_script(_SET)
        self._delete: AsyncScript = client.register_script(_DELETE)
        self._purge: AsyncScript = client.register_script(_PURGE)
        self._acquire: AsyncScript = client.register_script(_ACQUIRE)
        self._release: AsyncScript = client.register_script(_RELEASE)
        self._subscribers: list[Callable[[Invalidation], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = False
        # Tags this backend's messages, so that its own listener skips what it applied already.
        self._origin = secrets.token_hex(8)

    @property
    def name(self) -> str:
        """Always ``"redis"``."""
        return "redis"

    @property
    def store(self) -> RedisStore:
        """The store whose client and gate this backend uses."""
        return self._store

    @property
    def max_ttl_s(self) -> float:
        """The longest an entry may live."""
        return self._max_ttl_s

    @property
    def channel(self) -> str:
        """The pub/sub channel every set, delete and purge announces itself on.

        Messages are JSON: ``{"k": key}`` after a set or delete, ``{"t": [tags]}`` after a purge,
        each with ``"o"``, the sending backend's random id.
        """
        return self._channel

    @property
    def key_prefix(self) -> str:
        """What every key of this backend starts with, e.g. ``"bastion:cache:{bastion:cache}:"``."""
        return self._counter[:-1]

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``; ``None`` if missing, expired, or a tag was purged.

        One ``EVALSHA``, which also deletes an entry whose tag was purged.

        Raises:
            StoreError: Redis failed, or the entry is not one a cache backend wrote.
        """
        with self._guard:
            stored = await self._get(keys=[self._entries + key], args=[self._tags])
        return None if stored is None else decode_value(cast("bytes", stored))

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl_s: float,
        tags: Sequence[str] | TagSnapshot = (),
    ) -> bool:
        """Store ``value`` under ``key``; with a ``TagSnapshot``, only if no tag was purged since.

        Raises:
            StoreError: Redis failed.
            ValueError: if ``ttl_s`` is not positive and finite, or a tag is empty.
        """
        px = _ms(check_ttl(ttl_s, self._max_ttl_s))
        if isinstance(tags, TagSnapshot):
            names, versions, checked = tags.tags, tags.versions, "1"
        else:
            names, versions, checked = check_tags(tags), (), "0"
        keys = [self._entries + key, *(self._tags + tag for tag in names)]
        args: list[bytes | str | int] = [
            encode_value(value, self._compress_min_bytes),
            px,
            checked,
            self._channel,
            orjson.dumps({"k": key, "o": self._origin}),
            *names,
            *versions,
        ]
        with self._guard:
            stored = await self._set(keys=keys, args=args)
        return bool(stored)

    async def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; return whether there was one."""
        message = orjson.dumps({"k": key, "o": self._origin})
        with self._guard:
            removed = await self._delete(keys=[self._entries + key], args=[self._channel, message])
        self._notify(Invalidation(keys=(key,)))
        if removed and self._hooks is not None:
            self._hooks.publish(CachePurged(backend="redis", tags=(), keys=1))
        return bool(removed)

    async def purge(self, *tags: str) -> None:
        """Give each tag a new version (one ``EVALSHA`` for all of them)."""
        names = check_tags(tags)
        if not names:
            return
        keys = [self._counter, *(self._tags + tag for tag in names)]
        message = orjson.dumps({"t": names, "o": self._origin})
        with self._guard:
            await self._purge(keys=keys, args=[self._tag_ms, self._channel, message])
        self._notify(Invalidation(tags=names))
        if self._hooks is not None:
            self._hooks.publish(CachePurged(backend="redis", tags=names, keys=0))

    async def tag_snapshot(self, tags: Sequence[str]) -> TagSnapshot:
        """Return the tags' current versions (one ``MGET``; no round trip without tags)."""
        names = check_tags(tags)
        if not names:
            return TagSnapshot((), ())
        with self._guard:
            values = await self._store.client.mget([self._tags + tag for tag in names])
        versions = tuple(
            "0" if value is None else cast("bytes", value).decode() for value in values
        )
        return TagSnapshot(names, versions)

    async def acquire(self, key: str, token: str, *, ttl_s: float) -> LockState:
        """Take the lock on ``key`` unless a live holder or an unshared mark is there."""
        if not token:
            raise ValueError("a lock token must not be empty")
        with self._guard:
            state = await self._acquire(keys=[self._locks + key], args=[token, _ms(ttl_s)])
        return _LOCK_STATES[int(state)]

    async def release(self, key: str, token: str, *, unshared_ttl_s: float | None = None) -> None:
        """Release the lock if ``token`` holds it; with ``unshared_ttl_s``, leave the mark."""
        mark = "" if unshared_ttl_s is None else _ms(unshared_ttl_s)
        with self._guard:
            await self._release(keys=[self._locks + key], args=[token, mark])

    @property
    def subscribed(self) -> bool:
        """Whether invalidation messages are being received now (see ``subscribe``)."""
        return self._subscribed

    def subscribe(self, callback: Callable[[Invalidation], None]) -> Callable[[], None]:
        """Call ``callback`` with every invalidation, from this process or any other.

        This is what keeps local caches in front of Redis coherent. The first subscriber starts
        one pub/sub connection for the backend (it needs a running event loop). Deletes and
        purges made through this backend reach the callbacks at once, before the call returns;
        other processes' arrive by message. While the subscription is down, ``subscribed`` is
        False and, when it drops, callbacks get ``Invalidation(everything=True)``, since messages
        may have been missed; it reconnects by itself.

        Returns:
            A function that removes the callback.
        """
        self._subscribers.append(callback)
        listener = self._listener
        loop = asyncio.get_running_loop()
        if listener is None or listener.done() or listener.get_loop() is not loop:
            # None yet, ended, or left behind on an event loop that is gone (its loop check
            # ends it if that loop ever runs again): listen from this loop.
            self._subscribed = False
            self._listener = loop.create_task(self._listen(), name="bastion-cache-invalidations")

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, invalidation: Invalidation) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(invalidation)
            except Exception:  # one broken local cache must not break the others
                logger.exception("cache invalidation callback %r failed", callback)

    async def _listen(self) -> None:
        # The loop also ends when aclose() forgets this task: a cancellation that lands inside
        # redis-py can be absorbed there, and the loop must not outlive the backend.
        task = asyncio.current_task()

        def subscribed() -> None:
            self._subscribed = True

        def message(data: bytes) -> None:
            invalidation = _parse_message(data, self._origin)
            if invalidation is not None:
                self._notify(invalidation)

        def lost(exc: BaseException) -> None:
            # Messages may have been missed while the link was down: local copies go.
            self._subscribed = False
            self._notify(_EVERYTHING)
            if self._hooks is not None:
                self._hooks.publish(
                    CacheStoreFailure(
                        backend="redis", operation="subscribe", error=f"{type(exc).__name__}"
                    )
                )

        try:
            await follow_channel(
                self._store.client,
                self._channel,
                message,
                on_subscribed=subscribed,
                on_lost=lost,
                active=lambda: self._listener is task,
                retry_min_s=_RESUBSCRIBE_MIN_S,
                retry_max_s=_RESUBSCRIBE_MAX_S,
            )
        finally:
            if self._subscribed:
                self._subscribed = False
                self._notify(_EVERYTHING)

    async def aclose(self) -> None:
        """Stop the invalidation subscription; the store owns the client and closes it."""
        listener, self._listener = self._listener, None
        self._subscribers.clear()
        if listener is not None and not listener.done():
            listener.cancel()
            # Bounded: the loop sees it was forgotten within one listen timeout at the latest.
            await asyncio.wait({listener}, timeout=_LISTEN_TIMEOUT_S * 2)

    def __repr__(self) -> str:
        return f"RedisCacheBackend(keys={self.key_prefix!r}, gate={self._store.gate.state!r})"


def _parse_message(data: Any, origin: str) -> Invalidation | None:
    """Read an invalidation message; ``None`` for this backend's own (already applied)."""
    try:
        message = orjson.loads(data)
        if message.get("o") == origin:
            return None
        if "k" in message:
            return Invalidation(keys=(str(message["k"]),))
        return Invalidation(tags=tuple(str(tag) for tag in message["t"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return _EVERYTHING  # not ours, or garbled: the safe reading is "drop everything"
