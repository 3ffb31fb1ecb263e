"""``MemoryStore``: the in-process store, bounded, LRU-evicting and expiring.

It is the default when no Redis is configured, and the test double for every store-backed feature.
State is per process, so with several workers each worker counts on its own.

Every operation runs synchronously inside its ``async`` method, with no ``await`` in between, so
each one is atomic on the event loop without a lock. That is the memory counterpart of a Redis Lua
script.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Self

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.exceptions import ConfigurationError, StoreDataError
from bastion.stores.base import ClosingMixin

__all__ = ["MemoryStore", "MemoryStoreStats"]

_NEVER = math.inf
# Redis counters are signed 64-bit; the memory store refuses the same overflows so that code
# tested against memory behaves the same against Redis.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# One stored entry: (value, expires_at on the store's monotonic clock or _NEVER, accounted size).
_Entry = tuple[bytes, float, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStoreStats:
    """A snapshot of a ``MemoryStore``'s occupancy, shared by all its namespaces."""

    entries: int
    """Entries held, including expired ones not reclaimed yet."""
    bytes: int
    """Bytes accounted: UTF-8 key lengths plus value lengths (not Python's object overhead)."""
    max_entries: int
    """The entry bound."""
    max_bytes: int
    """The byte bound."""
    evictions: int
    """Live entries dropped to stay within a bound, since the store was created."""
    expirations: int
    """Expired entries reclaimed on access, since the store was created."""


class _Backend:
    """The state every namespaced view of one ``MemoryStore`` shares."""

    __slots__ = (
        "bytes",
        "clock",
        "data",
        "evictions",
        "expirations",
        "max_bytes",
        "max_entries",
    )

    def __init__(self, max_entries: int, max_bytes: int, clock: Clock) -> None:
        # Least recently used first. Every operation on a live key moves it to the end.
        self.data: OrderedDict[str, _Entry] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    def live(self, key: str) -> _Entry | None:
        """Return the entry if it exists and has not expired; reclaim it if it has."""
        entry = self.data.get(key)
        if entry is None:
            return None
        expires_at = entry[1]
        # Entries without expiry skip the clock read; most keys in a cache or counter have one.
        if expires_at != _NEVER and expires_at <= self.clock.monotonic():
            del self.data[key]
            self.bytes -= entry[2]
            self.expirations += 1
            return None
        self.data.move_to_end(key)
        return entry

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        size = len(key.encode()) + len(value)
        if size > self.max_bytes:
            raise StoreDataError(
                f"value of {size} bytes (key included) exceeds the store's max_bytes "
                f"({self.max_bytes})"
            )
        data = self.data
        old = data.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        data[key] = (value, expires_at, size)
        self.bytes += size
        # Evict from the LRU end. Expired entries get no separate index: keeping one ordered by
        # expiry costs O(log n) per write. Expired keys are the ones nobody touches, so they
        # drift to the LRU end and go first anyway. The new entry fits on its own (checked above)
        # and sits at the MRU end, so it is never the victim.
        while len(data) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, _, evicted_size) = data.popitem(last=False)
            self.bytes -= evicted_size
            self.evictions += 1

    def remove(self, key: str) -> bool:
        entry = self.live(key)
        if entry is None:
            return False
        del self.data[key]
        self.bytes -= entry[2]
        return True

    def expires_at(self, ttl_s: float | None) -> float:
        if ttl_s is None:
            return _NEVER
        if not 0 < ttl_s < _NEVER:
            raise ValueError(f"ttl_s must be positive and finite, not {ttl_s}")
        return self.clock.monotonic() + ttl_s


class MemoryStore(ClosingMixin):
    """A bounded in-process ``Store``: LRU eviction, lazy expiry, atomic operations.

    Two bounds hold at all times. ``max_entries`` caps the number of keys. ``max_bytes`` caps the
    UTF-8 size of the keys plus the size of the values. A write that would break either bound
    evicts the least recently used entries. Expiry is checked lazily when a key is touched, so
    there are no timers and no background task. An expired key that is never touched again is
    reclaimed when eviction reaches it.

    Example::

        store = MemoryStore(max_entries=1_000)
        limits = store.with_namespace("ratelimit")
        await limits.incr("client:42", ttl_s=60)

    Args:
        max_entries: the most keys held across all namespaces.
        max_bytes: the most key and value bytes held across all namespaces (default 64 MiB).
        clock: time source for expiry (inject a ``ManualClock`` in tests).

    Raises:
        ConfigurationError: if a bound is not positive.
    """

    __slots__ = ("_backend", "_namespace", "_prefix")

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"max_entries must be at least 1, not {max_entries}")
        if max_bytes < 1:
            raise ConfigurationError(f"max_bytes must be at least 1, not {max_bytes}")
        self._backend = _Backend(max_entries, max_bytes, clock)
        self._namespace = ""
        self._prefix = ""

    @property
    def name(self) -> str:
        """Always ``"memory"``."""
        return "memory"

    @property
    def namespace(self) -> str:
        """The namespace of this view (``""`` for the root)."""
        return self._namespace

    def with_namespace(self, namespace: str) -> Self:
        """Return a view whose keys live under ``namespace``, sharing this store's data and bounds.

        Namespaces nest: ``store.with_namespace("a").with_namespace("b").namespace == "a:b"``.

        Raises:
            ConfigurationError: if ``namespace`` is empty.
        """
        if not namespace:
            raise ConfigurationError("a store namespace must not be empty")
        view = object.__new__(type(self))
        view._backend = self._backend
        view._namespace = f"{self._namespace}:{namespace}" if self._namespace else namespace
        view._prefix = f"{view._namespace}:"
        return view

    def stats(self) -> MemoryStoreStats:
        """Return the store's occupancy (all namespaces together). O(1)."""
        backend = self._backend
        return MemoryStoreStats(
            entries=len(backend.data),
            bytes=backend.bytes,
            max_entries=backend.max_entries,
            max_bytes=backend.max_bytes,
            evictions=backend.evictions,
            expirations=backend.expirations,
        )

    async def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or ``None`` if it is missing or expired."""
        entry = self._backend.live(self._prefix + key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key``; expire it after ``ttl_s`` seconds if given.

        Raises:
            StoreDataError: if the entry alone is larger than ``max_bytes``.
            ValueError: if ``ttl_s`` is not positive.
        """
        backend = self._backend
        backend.put(self._prefix + key, value, backend.expires_at(ttl_s))

    async def set_nx(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is missing or expired; return whether it was stored."""
        backend = self._backend
        full_key = self._prefix + key
        expires_at = backend.expires_at(ttl_s)
        if backend.live(full_key) is not None:
            return False
        backend.put(full_key, value, expires_at)
        return True

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed (expired keys do not count)."""
        return self._backend.remove(self._prefix + key)

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add ``amount`` to the integer at ``key`` (missing counts as 0); return the new value.

        ``ttl_s`` applies only when this call creates the key; an existing key keeps its expiry.

        Raises:
            StoreDataError: if the value is not a canonical decimal integer, or the result leaves
                the signed 64-bit range (the rules Redis applies).
            ValueError: if ``ttl_s`` is not positive.
        """
        backend = self._backend
        full_key = self._prefix + key
        expires_at = backend.expires_at(ttl_s)
        entry = backend.live(full_key)
        if entry is None:
            value = amount
        else:
            value = _parse_int(entry[0]) + amount
            expires_at = entry[1]
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise StoreDataError("increment or decrement would overflow a 64-bit integer")
        backend.put(full_key, str(value).encode(), expires_at)
        return value

    async def expire(self, key: str, ttl_s: float) -> bool:
        """Make ``key`` expire ``ttl_s`` seconds from now; return whether the key existed.

        Raises:
            ValueError: if ``ttl_s`` is not positive.
        """
        backend = self._backend
        full_key = self._prefix + key
        expires_at = backend.expires_at(ttl_s)
        entry = backend.live(full_key)
        if entry is None:
            return False
        backend.data[full_key] = (entry[0], expires_at, entry[2])
        return True

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; ``None`` if it is missing or never expires."""
        backend = self._backend
        entry = backend.live(self._prefix + key)
        if entry is None or entry[1] == _NEVER:
            return None
        return entry[1] - backend.clock.monotonic()

    async def ping(self) -> None:
        """Do nothing: memory is always there."""

    async def aclose(self) -> None:
        """Do nothing: the store holds no connections, and its data lives as long as it does."""

    def __repr__(self) -> str:
        backend = self._backend
        return (
            f"MemoryStore(namespace={self._namespace!r}, entries={len(backend.data)}, "
            f"bytes={backend.bytes})"
        )


def _parse_int(value: bytes) -> int:
    """Parse a counter the way Redis does: canonical decimal only (no spaces, "+", "_" or "01")."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or str(number).encode() != value:
        raise StoreDataError("value is not an integer or out of range")
    return number
