"""Stores: where features keep shared state (counters, cache entries, idempotency records).

One small async ``Store`` protocol with two implementations. ``MemoryStore`` is per process,
bounded and the default. ``RedisStore`` is cluster-wide and atomic through Lua. ``store_from_url``
picks one from configuration. ``StoreHealthGate`` makes an outage fail fast instead of costing a
timeout per request. ``RedisStore`` is imported lazily, so ``import bastion.stores`` never imports
redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.stores._follow import SilentLinkError, follow_channel
from bastion.stores._url import store_from_url
from bastion.stores.base import Store
from bastion.stores.gate import GateGuard, GateState, StoreHealthGate
from bastion.stores.memory import MemoryStore, MemoryStoreStats

if TYPE_CHECKING:
    from bastion.stores.redis import RedisStore

__all__ = [
    "GateGuard",
    "GateState",
    "MemoryStore",
    "MemoryStoreStats",
    "RedisStore",
    "SilentLinkError",
    "Store",
    "StoreHealthGate",
    "follow_channel",
    "store_from_url",
]


def __getattr__(name: str) -> object:
    # RedisStore needs the optional redis extra; import it on first use only.
    if name == "RedisStore":
        from bastion.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
