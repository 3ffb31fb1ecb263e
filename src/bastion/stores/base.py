"""The ``Store`` contract every shared-state feature is written against.

A store maps string keys to ``bytes`` values with optional expiry, plus the few atomic operations
features need (``incr``, ``set_nx``). Keys are namespaced: ``store.with_namespace("ratelimit")``
returns a view whose keys cannot collide with another feature's. Values are bytes so that a store
never guesses a serialization; features encode their own (orjson, msgpack, raw).

Implementations: ``MemoryStore`` (one process; bounded LRU) and ``RedisStore`` (cluster-wide;
atomic through Lua). Feature-specific atomic operations are separate protocols that both
implement, so that a feature can check for what it needs at startup.

Every method may raise ``StoreError`` (``StoreUnavailable``/``StoreTimeout`` for outages); no
backend exception escapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ClosingMixin", "Store"]


@runtime_checkable
class Store(Protocol):
    """An async key-value store with expiry and atomic counters."""

    @property
    def name(self) -> str:
        """Short name of the backend (``"memory"``, ``"redis"``), for logs, events and metrics."""
        ...

    @property
    def namespace(self) -> str:
        """The namespace this view's keys live in (``""`` for the root)."""
        ...

    def with_namespace(self, namespace: str) -> Self:
        """Return a view of the same store whose keys live under ``namespace``.

        Views share the backend (connections, memory bounds, health gate); namespaces nest.
        """
        ...

    async def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or ``None`` if it is missing or expired."""
        ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value; expire after ``ttl_s`` if given."""
        ...

    async def set_nx(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store ``value`` only if ``key`` does not exist; return whether it was stored. Atomic."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        ...

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add ``amount`` to the integer at ``key`` (missing counts as 0); return the new value.

        Atomic. ``ttl_s`` is applied only when the call creates the key, so a fixed window keeps
        its original expiry however often it is incremented.
        """
        ...

    async def expire(self, key: str, ttl_s: float) -> bool:
        """Set ``key`` to expire after ``ttl_s``; return whether the key existed."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; ``None`` if the key is missing or never expires."""
        ...

    async def ping(self) -> None:
        """Check that the store answers; raise ``StoreUnavailable`` if it does not."""
        ...

    async def aclose(self) -> None:
        """Release what this store owns (connections it created). Borrowed clients stay open."""
        ...


class ClosingMixin:
    """Gives a store ``async with store:``, which calls ``aclose()`` on the way out."""

    __slots__ = ()

    async def aclose(self) -> None:
        """Release what the store owns; implementations override this."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
