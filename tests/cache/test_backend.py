"""The ``CacheBackend`` contract, run against memory and a real Redis."""

from __future__ import annotations

import os

import pytest

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, MemoryCacheBackend, TagSnapshot
from bastion.events import CachePurged
from tests.cache.conftest import Recorder

pytestmark = pytest.mark.anyio


async def test_missing_key_is_none(backend: CacheBackend) -> None:
    """A key never written reads as None."""
    assert None is await backend.get("nothing")


async def test_set_then_get_returns_the_value(backend: CacheBackend) -> None:
    """What is stored is what is read back."""
    stored = await backend.set("k", b"value", ttl_s=60)
    assert (True, b"value") == (stored, await backend.get("k"))


async def test_set_replaces_the_value_and_its_tags(backend: CacheBackend) -> None:
    """A second set replaces the first, tags included."""
    await backend.set("k", b"one", ttl_s=60, tags=["a"])
    await backend.set("k", b"two", ttl_s=60, tags=["b"])
    await backend.purge("a")
    assert b"two" == await backend.get("k")


async def test_delete_removes_and_reports_existence(backend: CacheBackend) -> None:
    """delete returns whether the key existed, and the key is gone afterwards."""
    await backend.set("k", b"v", ttl_s=60)
    assert (True, False, None) == (
        await backend.delete("k"),
        await backend.delete("k"),
        await backend.get("k"),
    )


async def test_purge_invalidates_only_entries_with_the_tag(backend: CacheBackend) -> None:
    """Purging a tag drops its entries and keeps the others."""
    await backend.set("album", b"1", ttl_s=60, tags=["albums"])
    await backend.set("both", b"2", ttl_s=60, tags=["tracks", "albums"])
    await backend.set("track", b"3", ttl_s=60, tags=["tracks"])
    await backend.set("plain", b"4", ttl_s=60)
    await backend.purge("albums")
    assert [None, None, b"3", b"4"] == [
        await backend.get(key) for key in ("album", "both", "track", "plain")
    ]


async def test_purge_of_several_tags_at_once(backend: CacheBackend) -> None:
    """One purge call invalidates the entries of every tag it names."""
    await backend.set("a", b"1", ttl_s=60, tags=["x"])
    await backend.set("b", b"2", ttl_s=60, tags=["y"])
    await backend.set("c", b"3", ttl_s=60, tags=["z"])
    await backend.purge("x", "y")
    assert [None, None, b"3"] == [await backend.get(key) for key in "abc"]


async def test_entry_written_after_a_purge_is_valid(backend: CacheBackend) -> None:
    """A purge invalidates what was written before it, not what comes after."""
    await backend.set("k", b"old", ttl_s=60, tags=["t"])
    await backend.purge("t")
    await backend.set("k", b"new", ttl_s=60, tags=["t"])
    assert b"new" == await backend.get("k")


async def test_a_purged_entry_never_comes_back(backend: CacheBackend) -> None:
    """Later purges and writes of other keys never make an invalidated entry valid again."""
    await backend.set("old", b"old", ttl_s=60, tags=["t"])
    await backend.purge("t")
    await backend.set("fresh", b"fresh", ttl_s=60, tags=["t"])
    await backend.purge("t")
    await backend.purge("other")
    assert (None, None) == (await backend.get("old"), await backend.get("fresh"))


async def test_snapshot_refuses_a_write_after_a_purge(backend: CacheBackend) -> None:
    """A value produced from data older than a purge of its tag is not stored."""
    snapshot = await backend.tag_snapshot(["albums"])
    await backend.purge("albums")
    stored = await backend.set("k", b"stale", ttl_s=60, tags=snapshot)
    assert (False, None) == (stored, await backend.get("k"))


async def test_snapshot_without_a_purge_stores(backend: CacheBackend) -> None:
    """A snapshot whose tags were not purged stores with those tags."""
    await backend.purge("albums")
    snapshot = await backend.tag_snapshot(["albums", "tracks"])
    stored = await backend.set("k", b"v", ttl_s=60, tags=snapshot)
    value = await backend.get("k")
    await backend.purge("tracks")
    assert (True, b"v", None) == (stored, value, await backend.get("k"))


async def test_snapshot_of_no_tags(backend: CacheBackend) -> None:
    """An empty snapshot stores like an untagged write."""
    snapshot = await backend.tag_snapshot([])
    assert (TagSnapshot((), ()), True) == (
        snapshot,
        await backend.set("k", b"v", ttl_s=60, tags=snapshot),
    )


async def test_large_values_round_trip(backend: CacheBackend) -> None:
    """Compressible and incompressible large values read back intact."""
    compressible = b"abc" * 100_000
    random = os.urandom(200_000)
    await backend.set("c", compressible, ttl_s=60)
    await backend.set("r", random, ttl_s=60)
    assert (compressible, random) == (await backend.get("c"), await backend.get("r"))


async def test_empty_value_round_trips(backend: CacheBackend) -> None:
    """An empty value is a value, not a miss."""
    await backend.set("k", b"", ttl_s=60)
    assert b"" == await backend.get("k")


@pytest.mark.parametrize("ttl_s", [0, -1, float("inf"), float("nan")])
async def test_ttl_must_be_positive_and_finite(backend: CacheBackend, ttl_s: float) -> None:
    """An entry always expires: zero, negative, infinite and NaN TTLs are refused."""
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        await backend.set("k", b"v", ttl_s=ttl_s)


async def test_tags_must_be_non_empty_strings(backend: CacheBackend) -> None:
    """An empty tag is refused, and so is a bare string where a sequence is expected."""
    with pytest.raises(ValueError, match="non-empty string"):
        await backend.set("k", b"v", ttl_s=60, tags=[""])
    with pytest.raises(TypeError, match="sequence of strings"):
        await backend.set("k", b"v", ttl_s=60, tags="albums")


async def test_purge_publishes_an_event(backend: CacheBackend, recorder: Recorder) -> None:
    """Purges and effective deletes are reported as CachePurged."""
    await backend.set("k", b"v", ttl_s=60)
    await backend.purge("a", "b")
    await backend.delete("k")
    await backend.delete("k")
    expected = [
        CachePurged(backend=backend.name, tags=("a", "b"), keys=0),
        CachePurged(backend=backend.name, tags=(), keys=1),
    ]
    assert expected == recorder.of(CachePurged)


async def test_lock_is_exclusive_until_released(backend: CacheBackend) -> None:
    """The first acquire wins; others see it held until its holder releases it."""
    states = [
        await backend.acquire("k", "one", ttl_s=10),
        await backend.acquire("k", "two", ttl_s=10),
    ]
    await backend.release("k", "two")  # not the holder: no effect
    states.append(await backend.acquire("k", "three", ttl_s=10))
    await backend.release("k", "one")
    states.append(await backend.acquire("k", "four", ttl_s=10))
    assert ["acquired", "held", "held", "acquired"] == states


async def test_unshared_release_leaves_a_mark(backend: CacheBackend) -> None:
    """A holder that could not share its value tells later callers to produce their own."""
    await backend.acquire("k", "one", ttl_s=10)
    await backend.release("k", "one", unshared_ttl_s=10)
    assert "unshared" == await backend.acquire("k", "two", ttl_s=10)


async def test_locks_are_per_key(backend: CacheBackend) -> None:
    """A lock on one key does not block another key."""
    await backend.acquire("a", "one", ttl_s=10)
    assert "acquired" == await backend.acquire("b", "two", ttl_s=10)


# ------------------------------------------------------------------------------ memory specifics


async def test_memory_entry_expires_after_its_ttl(
    memory_backend: MemoryCacheBackend, manual_clock: ManualClock
) -> None:
    """An entry is served until its TTL has passed, then it is gone."""
    await memory_backend.set("k", b"v", ttl_s=10)
    manual_clock.advance(9.9)
    before = await memory_backend.get("k")
    manual_clock.advance(0.1)
    assert (b"v", None) == (before, await memory_backend.get("k"))


async def test_memory_ttl_is_capped_at_max_ttl(manual_clock: ManualClock) -> None:
    """A TTL longer than max_ttl_s is shortened to it."""
    backend = MemoryCacheBackend(max_ttl_s=5, clock=manual_clock)
    await backend.set("k", b"v", ttl_s=3600)
    manual_clock.advance(5)
    assert None is await backend.get("k")


async def test_memory_lock_expires(
    memory_backend: MemoryCacheBackend, manual_clock: ManualClock
) -> None:
    """A lock whose holder never released it frees itself after its TTL."""
    await memory_backend.acquire("k", "dead", ttl_s=2)
    manual_clock.advance(2)
    assert "acquired" == await memory_backend.acquire("k", "alive", ttl_s=2)


async def test_memory_hit_returns_the_stored_object(memory_backend: MemoryCacheBackend) -> None:
    """Without compression, a hit hands back the very bytes object that was stored: no copy."""
    value = b"x" * 10_000
    await memory_backend.set("k", value, ttl_s=60)
    assert value is await memory_backend.get("k")


async def test_memory_is_bounded_by_bytes_evicting_lru(manual_clock: ManualClock) -> None:
    """Writes beyond max_bytes evict the least recently used entries first."""
    backend = MemoryCacheBackend(max_bytes=3_500, clock=manual_clock)
    for key in "abc":
        await backend.set(key, b"x" * 1_000, ttl_s=60)
    await backend.get("a")  # a is now more recent than b
    await backend.set("d", b"x" * 1_000, ttl_s=60)
    present = [key for key in "abcd" if await backend.get(key) is not None]
    stats = backend.stats()
    assert (["a", "c", "d"], 1) == (present, stats.evictions)
    assert stats.bytes <= stats.max_bytes


async def test_memory_refuses_an_entry_larger_than_the_bound(manual_clock: ManualClock) -> None:
    """An entry that cannot fit on its own is not stored and evicts nothing."""
    backend = MemoryCacheBackend(max_bytes=2_000, clock=manual_clock)
    await backend.set("small", b"x", ttl_s=60)
    stored = await backend.set("huge", b"x" * 5_000, ttl_s=60)
    assert (False, b"x", None) == (
        stored,
        await backend.get("small"),
        await backend.get("huge"),
    )


async def test_memory_compression_when_asked(manual_clock: ManualClock) -> None:
    """With compress_min_bytes, large compressible values take less room and read back intact."""
    plain = MemoryCacheBackend(clock=manual_clock)
    packed = MemoryCacheBackend(compress_min_bytes=1024, clock=manual_clock)
    value = b"abcdefgh" * 10_000
    await plain.set("k", value, ttl_s=60)
    await packed.set("k", value, ttl_s=60)
    assert value == await packed.get("k")
    assert packed.stats().bytes * 10 < plain.stats().bytes


async def test_memory_forgotten_tags_never_resurrect_entries(manual_clock: ManualClock) -> None:
    """When the tag table overflows, entries of forgotten purged tags stay invalid."""
    backend = MemoryCacheBackend(max_tags=2, clock=manual_clock)
    await backend.set("k", b"v", ttl_s=60, tags=["a"])
    await backend.purge("a")  # k is now stale
    await backend.purge("b")
    await backend.purge("c")  # "a" falls out of the table
    assert (None, 2) == (await backend.get("k"), backend.stats().tags)


async def test_memory_forgotten_tags_invalidate_older_entries(manual_clock: ManualClock) -> None:
    """Forgetting a tag errs on the safe side: entries written before may miss, never go stale."""
    backend = MemoryCacheBackend(max_tags=1, clock=manual_clock)
    await backend.set("fresh", b"v", ttl_s=60, tags=["a"])
    await backend.purge("a")
    await backend.set("after", b"w", ttl_s=60, tags=["a"])
    await backend.purge("b")  # forgets "a"
    await backend.set("latest", b"x", ttl_s=60, tags=["a"])
    assert [None, b"w", b"x"] == [await backend.get(key) for key in ("fresh", "after", "latest")]
