"""``MemoryCacheBackend``: the in-process cache backend, bounded by bytes, LRU, expiring by TTL.

Every operation runs without an ``await`` inside, so each is atomic on the event loop, the memory
counterpart of the Redis backend's Lua scripts.

Tag versions live in a table bounded by ``max_tags``. Only purged tags enter it (a tag never
purged has the table's *floor* version). Evicting a tag raises the floor to the evicted version,
so entries written before the eviction stop matching and are dropped, and no entry can ever match
a version again after a later purge: versions come from one counter and never repeat.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.cache._backend import (
    DEFAULT_MAX_TTL_S,
    LockState,
    TagSnapshot,
    check_options,
    check_tags,
    check_ttl,
    decode_value,
    encode_value,
)
from bastion.events import CachePurged, Hooks
from bastion.exceptions import ConfigurationError

__all__ = ["MemoryCacheBackend", "MemoryCacheStats"]

ENTRY_OVERHEAD_BYTES = 64
"""Bytes accounted per entry on top of its key, value and tags, for the bookkeeping it costs."""

_MAX_LOCKS_BEFORE_SWEEP = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryCacheStats:
    """A snapshot of a ``MemoryCacheBackend``'s occupancy."""

    entries: int
    """Entries held, including expired ones not reclaimed yet."""
    bytes: int
    """Bytes accounted: UTF-8 keys, stored (maybe compressed) values, tags, and a fixed overhead."""
    max_bytes: int
    """The byte bound."""
    evictions: int
    """Live entries dropped to stay within the bound, since the backend was created."""
    expirations: int
    """Expired or purged entries reclaimed on access, since the backend was created."""
    tags: int
    """Purged tags whose versions are remembered."""


class _Entry:
    __slots__ = ("encoded", "expires_at", "size", "tags", "value")

    def __init__(
        self,
        value: bytes,
        encoded: bool,
        expires_at: float,
        size: int,
        tags: tuple[tuple[str, int], ...],
    ) -> None:
        self.value = value
        self.encoded = encoded  # prefixed by encode_value (compression on); else as given
        self.expires_at = expires_at
        self.size = size
        self.tags = tags


class MemoryCacheBackend:
    """A ``CacheBackend`` in this process's memory: LRU within a byte bound, TTLs, tag versions.

    Example::

        backend = MemoryCacheBackend(max_bytes=32 * 1024 * 1024)
        await backend.set("album:1", body, ttl_s=60, tags=["albums"])
        await backend.purge("albums")

    Args:
        max_bytes: the most bytes held (see ``MemoryCacheStats.bytes``); least recently used
            entries are evicted to stay within it.
        max_tags: the most purged tags whose versions are remembered.
        max_ttl_s: the longest an entry may live; longer TTLs are shortened to it.
        compress_min_bytes: ``None`` (the default) stores values as given and returns the very
            same ``bytes`` object from ``get``: no copy and no decompression on a hit. A size
            compresses values of at least that size when it pays, trading CPU per hit for RAM.
        hooks: where ``CachePurged`` is published.
        clock: time source for expiry (inject a ``ManualClock`` in tests).

    Raises:
        ConfigurationError: if an option is out of range.
    """

    __slots__ = (
        "_bytes",
        "_clock",
        "_compress_min_bytes",
        "_data",
        "_epoch",
        "_evictions",
        "_expirations",
        "_floor",
        "_hooks",
        "_locks",
        "_max_bytes",
        "_max_tags",
        "_max_ttl_s",
        "_tags",
    )

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_tags: int = 100_000,
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        compress_min_bytes: int | None = None,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_bytes < 1:
            raise ConfigurationError(f"max_bytes must be at least 1, not {max_bytes}")
        if max_tags < 1:
            raise ConfigurationError(f"max_tags must be at least 1, not {max_tags}")
        check_options(max_ttl_s=max_ttl_s, compress_min_bytes=compress_min_bytes or 0)
        self._max_bytes = max_bytes
        self._max_tags = max_tags
        self._max_ttl_s = float(max_ttl_s)
        self._compress_min_bytes = compress_min_bytes
        self._hooks = hooks
        self._clock = clock
        # Least recently used first.
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._evictions = 0
        self._expirations = 0
        self._tags: OrderedDict[str, int] = OrderedDict()
        self._epoch = 0
        self._floor = 0
        # key -> (token or "" for the unshared mark, expires_at)
        self._locks: dict[str, tuple[str, float]] = {}

    @property
    def name(self) -> str:
        """Always ``"memory"``."""
        return "memory"

    @property
    def max_ttl_s(self) -> float:
        """The longest an entry may live."""
        return self._max_ttl_s

    def stats(self) -> MemoryCacheStats:
        """Return the backend's occupancy. O(1)."""
        return MemoryCacheStats(
            entries=len(self._data),
            bytes=self._bytes,
            max_bytes=self._max_bytes,
            evictions=self._evictions,
            expirations=self._expirations,
            tags=len(self._tags),
        )

    def _version(self, tag: str) -> int:
        version = self._tags.get(tag)
        return self._floor if version is None else version

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._data[key]
        self._bytes -= entry.size

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``; ``None`` if missing, expired, or a tag was purged."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock.monotonic() or any(
            self._version(tag) != version for tag, version in entry.tags
        ):
            self._drop(key, entry)
            self._expirations += 1
            return None
        self._data.move_to_end(key)
        return decode_value(entry.value) if entry.encoded else entry.value

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl_s: float,
        tags: Sequence[str] | TagSnapshot = (),
    ) -> bool:
        """Store ``value`` under ``key``; with a ``TagSnapshot``, only if no tag was purged since.

        An entry larger than ``max_bytes`` on its own is not stored (``False``).

        Raises:
            ValueError: if ``ttl_s`` is not positive and finite, or a tag is empty.
        """
        ttl_s = check_ttl(ttl_s, self._max_ttl_s)
        if isinstance(tags, TagSnapshot):
            recorded = tuple(zip(tags.tags, map(int, tags.versions), strict=True))
            if any(self._version(tag) != version for tag, version in recorded):
                return False
        else:
            recorded = tuple((tag, self._version(tag)) for tag in check_tags(tags))
        threshold = self._compress_min_bytes
        encoded = threshold is not None
        stored = bytes(value) if threshold is None else encode_value(value, threshold)
        size = (
            len(key.encode())
            + len(stored)
            + sum(len(tag.encode()) + 8 for tag, _ in recorded)
            + ENTRY_OVERHEAD_BYTES
        )
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        if size > self._max_bytes:
            return False
        data[key] = _Entry(stored, encoded, self._clock.monotonic() + ttl_s, size, recorded)
        self._bytes += size
        # The new entry fits on its own and sits at the MRU end, so it is never the victim.
        while self._bytes > self._max_bytes:
            _, evicted = data.popitem(last=False)
            self._bytes -= evicted.size
            self._evictions += 1
        return True

    async def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; return whether a live one was there."""
        entry = self._data.get(key)
        if entry is None:
            return False
        self._drop(key, entry)
        if entry.expires_at <= self._clock.monotonic():
            return False
        if self._hooks is not None:
            self._hooks.publish(CachePurged(backend="memory", tags=(), keys=1))
        return True

    async def purge(self, *tags: str) -> None:
        """Give each tag a new version: every entry carrying one of them stops matching."""
        self.discard_tags(*tags)

    def discard(self, key: str) -> None:
        """Drop the entry under ``key`` now: ``delete`` for synchronous callers (no event)."""
        entry = self._data.get(key)
        if entry is not None:
            self._drop(key, entry)

    def discard_tags(self, *tags: str) -> None:
        """Purge ``tags`` now: ``purge`` for synchronous callers (an invalidation callback)."""
        names = check_tags(tags)
        if not names:
            return
        self._epoch += 1
        table = self._tags
        for tag in names:
            table.pop(tag, None)
            table[tag] = self._epoch
        while len(table) > self._max_tags:
            _, evicted = table.popitem(last=False)
            self._floor = max(self._floor, evicted)
        if self._hooks is not None:
            self._hooks.publish(CachePurged(backend="memory", tags=names, keys=0))

    async def tag_snapshot(self, tags: Sequence[str]) -> TagSnapshot:
        """Return the tags' current versions."""
        names = check_tags(tags)
        return TagSnapshot(names, tuple(str(self._version(tag)) for tag in names))

    async def acquire(self, key: str, token: str, *, ttl_s: float) -> LockState:
        """Take the lock on ``key`` unless a live holder or an unshared mark is there."""
        now = self._clock.monotonic()
        locks = self._locks
        held = locks.get(key)
        if held is not None and held[1] > now:
            return "unshared" if held[0] == "" else "held"
        if len(locks) >= _MAX_LOCKS_BEFORE_SWEEP:
            for stale in [name for name, (_, until) in locks.items() if until <= now]:
                del locks[stale]
        locks[key] = (token, now + check_ttl(ttl_s, math.inf))
        return "acquired"

    async def release(self, key: str, token: str, *, unshared_ttl_s: float | None = None) -> None:
        """Release the lock if ``token`` holds it; with ``unshared_ttl_s``, leave the mark."""
        held = self._locks.get(key)
        if held is None or held[0] != token:
            return
        if unshared_ttl_s is None:
            del self._locks[key]
        else:
            ttl_s = check_ttl(unshared_ttl_s, math.inf)
            self._locks[key] = ("", self._clock.monotonic() + ttl_s)

    def clear(self) -> None:
        """Drop every entry at once (tag versions and locks stay)."""
        self._data.clear()
        self._bytes = 0

    async def aclose(self) -> None:
        """Do nothing: the entries live as long as the backend."""

    def __repr__(self) -> str:
        return f"MemoryCacheBackend(entries={len(self._data)}, bytes={self._bytes})"
