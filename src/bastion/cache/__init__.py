"""Caching: a storage engine with tag versions and single-flight, and ``@cached`` for functions.

Everything here works with the memory store in one process or with Redis across workers; a store
outage never fails the caller (the producer runs uncached).

- ``CacheBackend`` stores bytes with a TTL and tags: ``MemoryCacheBackend`` (bounded by bytes,
  LRU) and ``RedisCacheBackend`` (one round trip per lookup, tags checked in the same script).
  Purging a tag is O(1): tags are versioned, not indexed.
- ``SingleFlight`` runs one producer per key, in a process and across workers.
- ``@cached(ttl=..., tags=...)`` caches an async function's results by its arguments (FastAPI
  dependencies left out of the key), with single-flight and an optional local level in front of
  Redis kept coherent by pub/sub; ``purge(*tags)`` invalidates by tag everywhere.
- ``CacheMiddleware`` is an RFC 9111 response cache for GET/HEAD, before the framework routes:
  ``@cache(ttl=60, tags=["albums"])`` on an endpoint (or a ``CacheRule``) declares a route's
  policy; ETags and 304s, stale-while-revalidate / stale-if-error, per-caller entries for
  requests with credentials; ``@coalesce()`` shares one handler run among identical requests;
  ``@invalidates("albums")`` purges tags when a write succeeds.

See ``docs/cached.md`` and ``docs/cache.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.cache._backend import (
    CacheBackend,
    Invalidation,
    LockState,
    TagSnapshot,
    backend_for_store,
    default_backend,
    set_default_backend,
)
from bastion.cache._flight import FlightResult, SingleFlight
from bastion.cache._function import CachedFunction, CacheOptions, cached, purge
from bastion.cache._memory import MemoryCacheBackend, MemoryCacheStats
from bastion.cache._metrics import function_cache_metrics
from bastion.cache._middleware import (
    CacheMiddleware,
    EncodingNegotiator,
    cache_layer,
    cache_options,
)
from bastion.cache._policy import CachePolicy, CacheRule, cache, coalesce, invalidates
from bastion.cache._serialize import JsonSerializer, Serializer, TypedSerializer

if TYPE_CHECKING:
    from bastion.cache._redis import RedisCacheBackend

__all__ = [
    "CacheBackend",
    "CacheMiddleware",
    "CacheOptions",
    "CachePolicy",
    "CacheRule",
    "CachedFunction",
    "EncodingNegotiator",
    "FlightResult",
    "Invalidation",
    "JsonSerializer",
    "LockState",
    "MemoryCacheBackend",
    "MemoryCacheStats",
    "RedisCacheBackend",
    "Serializer",
    "SingleFlight",
    "TagSnapshot",
    "TypedSerializer",
    "backend_for_store",
    "cache",
    "cache_layer",
    "cache_options",
    "cached",
    "coalesce",
    "default_backend",
    "function_cache_metrics",
    "invalidates",
    "purge",
    "set_default_backend",
]


def __getattr__(name: str) -> object:
    # RedisCacheBackend needs the redis extra; import it on first use only.
    if name == "RedisCacheBackend":
        from bastion.cache._redis import RedisCacheBackend

        return RedisCacheBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
