"""The cache storage contract: entries with a TTL and tags, purge by tag, and a short lock.

Both caches of ``bastion.cache`` (responses and functions) store opaque ``bytes`` through a
``CacheBackend``. Two implementations keep the same contract: ``MemoryCacheBackend`` (one process,
bounded by bytes) and ``RedisCacheBackend`` (every worker and host, one round trip per lookup).

Tags are versioned rather than indexed. Each tag has a version; an entry records the versions of
its tags when it is written; a lookup checks them in the same step (one Lua call on Redis); a purge
gives the tag a new version, which is O(1) and leaves nothing to prune: the entries it
invalidated are dropped when next read or when their TTL ends. Versions are unique across purges
(a counter), so an entry can never become valid again. A tag's version outlives every entry that
could have recorded the version before it (``max_ttl_s``), after which it is forgotten.

A producer that reads the data behind a tag, and writes the result after a purge of that tag,
must not store a result computed from the data before the purge. ``tag_snapshot(tags)`` before
producing, and ``set(..., tags=snapshot)`` afterwards, stores only if no tag was purged in
between.

Values above ``compress_min_bytes`` are compressed (zstd when ``zstandard`` is installed, zlib
otherwise) when that makes them smaller. The Redis backend does so by default; the memory backend
only when asked, since there it trades CPU on every hit for RAM.

Every operation may raise ``StoreError`` (``StoreUnavailable`` during an outage). The caches
built on a backend catch it and run uncached (fail open).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from bastion.exceptions import ConfigurationError, StoreDataError

if TYPE_CHECKING:
    from bastion._clock import Clock
    from bastion.events import Hooks
    from bastion.stores.base import Store

__all__ = [
    "CacheBackend",
    "DEFAULT_COMPRESS_MIN_BYTES",
    "DEFAULT_MAX_TTL_S",
    "Invalidation",
    "LockState",
    "TagSnapshot",
    "backend_for_store",
    "decode_value",
    "default_backend",
    "default_hooks",
    "encode_value",
    "set_default_backend",
]

DEFAULT_MAX_TTL_S = 86_400.0
"""The longest an entry may live (one day); longer TTLs are shortened to it."""

DEFAULT_COMPRESS_MIN_BYTES = 1024
"""Values of at least this many bytes are compressed when that makes them smaller."""

LockState = Literal["acquired", "held", "unshared"]
"""What ``CacheBackend.acquire`` found: the lock is now ours, someone else holds it, or its last
holder produced a value it could not share (waiters should produce their own)."""

# The first byte of every stored value says how the rest is encoded.
_RAW = 0
_ZLIB = 1
_ZSTD = 2


@dataclass(frozen=True, slots=True)
class TagSnapshot:
    """The versions of some tags at one moment, from ``CacheBackend.tag_snapshot``.

    Pass it as ``tags=`` to ``CacheBackend.set``: the value is stored with these tags only if
    none of them was purged since the snapshot.
    """

    tags: tuple[str, ...]
    """The tags, in the order they were asked for."""
    versions: tuple[str, ...]
    """Their versions then (``"0"`` for a tag never purged or long forgotten)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invalidation:
    """What a shared backend reports to local caches (``RedisCacheBackend.subscribe``)."""

    keys: tuple[str, ...] = ()
    """Keys that were written or deleted: drop local copies."""
    tags: tuple[str, ...] = ()
    """Tags that were purged."""
    everything: bool = False
    """Messages may have been missed (the subscription dropped): drop every local copy."""


@runtime_checkable
class CacheBackend(Protocol):
    """Where cache entries live: bytes under string keys, with a TTL and tags.

    Every method may raise ``StoreError``; ``StoreUnavailable`` means an outage.
    """

    @property
    def name(self) -> str:
        """``"memory"`` or ``"redis"``, for events and metrics."""
        ...

    async def get(self, key: str) -> bytes | None:
        """Return the value under ``key``; ``None`` if missing, expired, or a tag was purged."""
        ...

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl_s: float,
        tags: Sequence[str] | TagSnapshot = (),
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (at most ``max_ttl_s``).

        Args:
            key: the entry's key.
            value: the bytes to store; compressed transparently above a threshold.
            ttl_s: seconds the entry lives; positive.
            tags: the entry's tags. A ``TagSnapshot`` stores only if none of its tags was purged
                since it was taken; plain names take the tags' current versions.

        Returns:
            Whether the value was stored (``False``: a snapshot's tag was purged meanwhile).
        """
        ...

    async def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; return whether there was one."""
        ...

    async def purge(self, *tags: str) -> None:
        """Invalidate every entry carrying any of ``tags``: O(1) per tag, nothing to prune."""
        ...

    async def tag_snapshot(self, tags: Sequence[str]) -> TagSnapshot:
        """Return the current versions of ``tags``, to pass to ``set`` after producing."""
        ...

    async def acquire(self, key: str, token: str, *, ttl_s: float) -> LockState:
        """Try to take the short lock on ``key`` for ``ttl_s`` seconds, as ``token``.

        Returns ``"acquired"``, ``"held"`` (someone else has it) or ``"unshared"`` (its last
        holder released it with an unshared mark: produce your own value, without the lock).
        """
        ...

    async def release(self, key: str, token: str, *, unshared_ttl_s: float | None = None) -> None:
        """Release the lock on ``key`` if ``token`` still holds it.

        With ``unshared_ttl_s``, leave an ``"unshared"`` mark for that long instead, so that
        waiters stop waiting for a value that will never be stored and produce their own.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend owns."""
        ...


def check_ttl(ttl_s: float, max_ttl_s: float) -> float:
    """Return ``ttl_s`` capped at ``max_ttl_s``; refuse a TTL that is not positive and finite."""
    if not 0 < ttl_s < float("inf"):
        raise ValueError(f"ttl_s must be positive and finite, not {ttl_s}")
    return min(ttl_s, max_ttl_s)


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Return the tags as a tuple without duplicates; refuse empty or non-string tags."""
    if isinstance(tags, str):
        raise TypeError(f"tags must be a sequence of strings, not the string {tags!r}")
    unique = tuple(dict.fromkeys(tags))
    for tag in unique:
        tag_object: object = tag  # checked at runtime: callers may not be type-checked
        if not isinstance(tag_object, str) or not tag_object:
            raise ValueError(f"a cache tag must be a non-empty string, not {tag!r}")
    return unique


def check_options(*, max_ttl_s: float, compress_min_bytes: int) -> None:
    """Refuse out-of-range backend options with a ``ConfigurationError``."""
    if not 0 < max_ttl_s < float("inf"):
        raise ConfigurationError(f"max_ttl_s must be positive and finite, not {max_ttl_s}")
    if compress_min_bytes < 0:
        raise ConfigurationError(f"compress_min_bytes must be 0 or more, not {compress_min_bytes}")


_zstd: Any = None  # (compressor, decompressor) once zstandard was imported; False if missing


def _zstd_codec() -> Any:
    global _zstd
    if _zstd is None:
        try:
            import zstandard  # the compression extra; imported on first large value only
        except ImportError:
            _zstd = False
        else:
            _zstd = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
    return _zstd


def encode_value(value: bytes, compress_min_bytes: int) -> bytes:
    """Prefix ``value`` with its encoding byte, compressing it first when large and worth it."""
    if len(value) >= max(compress_min_bytes, 1):
        codec = _zstd_codec()
        packed: bytes
        if codec:
            packed = codec[0].compress(value)
            flag = _ZSTD
        else:
            packed = zlib.compress(value, 6)
            flag = _ZLIB
        if len(packed) < len(value):
            return bytes((flag,)) + packed
    return b"\x00" + value


def decode_value(stored: bytes) -> bytes:
    """Undo ``encode_value``.

    Raises:
        StoreDataError: the bytes are not an encoded value (or zstd is needed and missing).
    """
    if not stored:
        raise StoreDataError("cache entry is empty: not written by a cache backend")
    flag = stored[0]
    if flag == _RAW:
        return stored[1:]
    try:
        if flag == _ZLIB:
            return zlib.decompress(stored[1:])
        if flag == _ZSTD:
            codec = _zstd_codec()
            if not codec:
                raise StoreDataError("cache entry is zstd-compressed and zstandard is missing")
            return bytes(codec[1].decompress(stored[1:]))
    except (zlib.error, ValueError) as exc:
        raise StoreDataError(f"cache entry could not be decompressed: {exc}") from exc
    except Exception as exc:  # zstandard.ZstdError is not importable without the extra
        if type(exc).__name__ == "ZstdError":
            raise StoreDataError(f"cache entry could not be decompressed: {exc}") from exc
        raise
    raise StoreDataError(f"cache entry has unknown encoding {flag}")


def backend_for_store(
    store: Store,
    *,
    max_bytes: int = 64 * 1024 * 1024,
    max_ttl_s: float = DEFAULT_MAX_TTL_S,
    compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
    hooks: Hooks | None = None,
    clock: Clock | None = None,
) -> CacheBackend:
    """Return the cache backend that matches a bastion store.

    A ``RedisStore`` (or a view of it) gives a ``RedisCacheBackend`` sharing its client, prefix and
    health gate, under the ``cache`` namespace. Any other store gives a ``MemoryCacheBackend``
    of ``max_bytes``: a memory store is private to the process anyway, and the cache needs its
    own byte bound and tag table.

    Args:
        store: bastion's store (``Bastion.store``).
        max_bytes: the memory backend's bound.
        max_ttl_s: the longest TTL an entry may have.
        compress_min_bytes: the Redis backend's compression threshold (memory stores values as
            given: compressing there would cost CPU on every hit).
        hooks: where ``CachePurged`` is published.
        clock: time source of the memory backend (system clock when ``None``).
    """
    if store.name == "redis":
        from bastion.cache._redis import RedisCacheBackend  # needs the redis extra
        from bastion.stores.redis import RedisStore

        if isinstance(store, RedisStore):
            return RedisCacheBackend(
                store.with_namespace("cache"),
                max_ttl_s=max_ttl_s,
                compress_min_bytes=compress_min_bytes,
                hooks=hooks,
            )
    from bastion.cache._memory import MemoryCacheBackend

    options: dict[str, Any] = {} if clock is None else {"clock": clock}
    return MemoryCacheBackend(max_bytes=max_bytes, max_ttl_s=max_ttl_s, hooks=hooks, **options)


_default_backend: CacheBackend | None = None
_default_hooks: Hooks | None = None


def set_default_backend(backend: CacheBackend | None, *, hooks: Hooks | None = None) -> None:
    """Make ``backend`` the one that caches without an explicit ``backend=`` use.

    ``Bastion`` calls this at startup with the backend on its store (memory, or Redis when
    ``BASTION_REDIS_URL`` is set) and its hooks, so ``@cached`` functions and the response cache
    share one backend and report to one place. ``None`` goes back to a private memory backend
    created on first use, and no hooks.

    Args:
        backend: the shared backend, or ``None``.
        hooks: where caches without their own ``hooks=`` publish events.
    """
    global _default_backend, _default_hooks
    _default_backend = backend
    _default_hooks = hooks


def default_backend() -> CacheBackend:
    """Return the backend set by ``set_default_backend``, or a memory one created on first use."""
    global _default_backend
    if _default_backend is None:
        from bastion.cache._memory import MemoryCacheBackend

        _default_backend = MemoryCacheBackend()
    return _default_backend


def default_hooks() -> Hooks | None:
    """Return the hooks given to ``set_default_backend``, if any."""
    return _default_hooks
