"""``MemoryStore`` beyond the contract: its bounds, LRU order, lazy expiry and stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from bastion.exceptions import ConfigurationError, StoreDataError
from bastion.stores import MemoryStore, MemoryStoreStats

if TYPE_CHECKING:
    from bastion._clock import ManualClock

pytestmark = pytest.mark.anyio


async def _present(store: MemoryStore, *keys: str) -> list[str]:
    return [key for key in keys if await store.get(key) is not None]


async def test_name_is_memory() -> None:
    """The backend's name, used in events and metrics, is "memory"."""
    assert "memory" == MemoryStore().name


async def test_entry_bound_evicts_the_least_recently_used() -> None:
    """Writing past max_entries evicts the oldest entry, one for one."""
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c", "d"):
        await store.set(key, b"v")
    assert ["b", "c", "d"] == await _present(store, "a", "b", "c", "d")
    assert (3, 1) == (store.stats().entries, store.stats().evictions)


async def test_byte_bound_counts_keys_and_values() -> None:
    """max_bytes covers UTF-8 key bytes plus value bytes; going over evicts from the LRU end."""
    store = MemoryStore(max_bytes=100)
    await store.set("k1", b"x" * 40)  # 42 bytes
    await store.set("k2", b"x" * 40)  # 84 bytes
    await store.set("k3", b"x" * 40)  # 126 bytes: k1 must go
    assert ["k2", "k3"] == await _present(store, "k1", "k2", "k3")
    assert 84 == store.stats().bytes


async def test_byte_bound_counts_utf8_key_bytes() -> None:
    """A non-ASCII key is accounted by its encoded size, not its length in characters."""
    store = MemoryStore()
    await store.set("é", b"")
    assert 2 == store.stats().bytes


async def test_byte_bound_counts_the_namespace() -> None:
    """A namespaced key is accounted with its namespace prefix ("ns:k" is 4 bytes)."""
    store = MemoryStore()
    await store.with_namespace("ns").set("k", b"vv")
    assert 6 == store.stats().bytes


async def test_overwriting_replaces_the_accounted_size() -> None:
    """Replacing a value accounts only the new value."""
    store = MemoryStore()
    await store.set("k", b"x" * 100)
    await store.set("k", b"x" * 10)
    assert (1, 11) == (store.stats().entries, store.stats().bytes)


async def test_one_big_write_evicts_several_entries() -> None:
    """A large value evicts as many old entries as it needs, and no more."""
    store = MemoryStore(max_bytes=100)
    for key in ("a", "b", "c", "d"):
        await store.set(key, b"x" * 19)  # 20 bytes each, 80 in all
    await store.set("big", b"x" * 57)  # 60 bytes: 140 in all, so a and b go
    assert ["c", "d", "big"] == await _present(store, "a", "b", "c", "d", "big")
    assert (100, 2) == (store.stats().bytes, store.stats().evictions)


async def test_a_value_larger_than_the_bound_is_refused() -> None:
    """An entry that could never fit raises StoreDataError and evicts nothing."""
    store = MemoryStore(max_bytes=100)
    await store.set("keep", b"x")
    with pytest.raises(StoreDataError, match="max_bytes"):
        await store.set("huge", b"x" * 100)
    assert ["keep"] == await _present(store, "keep", "huge")


async def test_reads_refresh_recency() -> None:
    """get() marks a key as recently used, so eviction picks another one."""
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c"):
        await store.set(key, b"v")
    await store.get("a")
    await store.set("d", b"v")
    assert ["a", "c", "d"] == await _present(store, "a", "b", "c", "d")


@pytest.mark.parametrize(
    "touch",
    ["set", "incr", "set_nx", "expire", "ttl"],
)
async def test_every_operation_on_a_live_key_refreshes_recency(touch: str) -> None:
    """Writes, failed set_nx(), expire() and ttl() count as use, like get()."""
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c"):
        await store.set(key, b"1")
    if touch == "set":
        await store.set("a", b"1")
    elif touch == "incr":
        await store.incr("a")
    elif touch == "set_nx":
        await store.set_nx("a", b"1")
    elif touch == "expire":
        await store.expire("a", 60)
    else:
        await store.ttl("a")
    await store.set("d", b"1")
    assert ["a", "c", "d"] == await _present(store, "a", "b", "c", "d")


async def test_namespaces_share_one_set_of_bounds() -> None:
    """All views draw on the same bounds: a write in one namespace can evict another's key."""
    store = MemoryStore(max_entries=2)
    first, second = store.with_namespace("first"), store.with_namespace("second")
    await first.set("a", b"v")
    await first.set("b", b"v")
    await second.set("c", b"v")
    assert (["b"], ["c"]) == (await _present(first, "a", "b"), await _present(second, "c"))


async def test_expiry_is_lazy_and_exact(manual_clock: ManualClock) -> None:
    """A key lives until its deadline on the injected clock, and is gone from that instant."""
    store = MemoryStore(clock=manual_clock)
    await store.set("key", b"value", ttl_s=10)
    manual_clock.advance(9.999)
    assert b"value" == await store.get("key")
    manual_clock.advance(0.001)
    assert None is await store.get("key")


async def test_ttl_counts_down_with_the_clock(manual_clock: ManualClock) -> None:
    """ttl() reports the exact remaining time on the injected clock."""
    store = MemoryStore(clock=manual_clock)
    await store.set("key", b"value", ttl_s=10)
    manual_clock.advance(4)
    assert 6.0 == await store.ttl("key")


async def test_expired_entries_are_held_until_touched(manual_clock: ManualClock) -> None:
    """With no background task, an expired entry stays counted until an access reclaims it."""
    store = MemoryStore(clock=manual_clock)
    await store.set("key", b"value", ttl_s=1)
    manual_clock.advance(2)
    held = store.stats()
    await store.get("key")
    reclaimed = store.stats()
    assert (1, 0) == (held.entries, held.expirations)
    assert (0, 0, 1) == (reclaimed.entries, reclaimed.bytes, reclaimed.expirations)


async def test_expired_entries_at_the_lru_end_are_evicted_first(manual_clock: ManualClock) -> None:
    """Entries nobody touches drift to the LRU end, so an expired one goes before live ones."""
    store = MemoryStore(max_entries=2, clock=manual_clock)
    await store.set("stale", b"v", ttl_s=1)
    await store.set("live", b"v")
    manual_clock.advance(2)
    await store.set("new", b"v")
    assert ["live", "new"] == await _present(store, "stale", "live", "new")


async def test_incr_keeps_the_expiry_of_the_counter(manual_clock: ManualClock) -> None:
    """A fixed window: increments after creation do not extend the counter's life."""
    store = MemoryStore(clock=manual_clock)
    await store.incr("window", ttl_s=10)
    manual_clock.advance(6)
    await store.incr("window", ttl_s=10)
    manual_clock.advance(4)
    assert None is await store.get("window")


async def test_stats_describe_the_whole_store() -> None:
    """stats() reports entries, bytes, bounds and counters for all namespaces together."""
    store = MemoryStore(max_entries=2, max_bytes=1_000)
    await store.set("a", b"12345")  # 6 bytes, evicted by the third write
    await store.with_namespace("ns").set("b", b"1")  # "ns:b" + 1: 5 bytes
    await store.set("c", b"1")  # 2 bytes
    expected = MemoryStoreStats(
        entries=2, bytes=7, max_entries=2, max_bytes=1_000, evictions=1, expirations=0
    )
    assert expected == store.with_namespace("other").stats()


async def test_namespace_property_shows_the_nesting() -> None:
    """Nested views report their full namespace path."""
    store = MemoryStore()
    assert ("", "a", "a:b") == (
        store.namespace,
        store.with_namespace("a").namespace,
        store.with_namespace("a").with_namespace("b").namespace,
    )


async def test_store_is_an_async_context_manager() -> None:
    """``async with MemoryStore() as store`` works, and the data outlives the block."""
    async with MemoryStore() as store:
        await store.set("key", b"value")
    assert b"value" == await store.get("key")


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_entries": 0}, "max_entries"), ({"max_bytes": 0}, "max_bytes")],
)
def test_bounds_must_be_positive(options: dict[str, Any], message: str) -> None:
    """A bound below 1 is a configuration error naming the option."""
    with pytest.raises(ConfigurationError, match=message):
        MemoryStore(**options)


async def test_repr_shows_namespace_and_occupancy() -> None:
    """The repr says which view it is and how full the store is."""
    store = MemoryStore()
    await store.set("k", b"v")
    assert "MemoryStore(namespace='ns', entries=1, bytes=2)" == repr(store.with_namespace("ns"))
