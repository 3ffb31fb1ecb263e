"""The ``Store`` contract: every test runs on ``MemoryStore`` and on ``RedisStore``.

A feature written against ``Store`` and tested on memory behaves the same on Redis because these
tests hold for both. On memory, time is a ``ManualClock``. On Redis, expiry needs real time, so
TTLs are short (100 ms); this is the only place where store tests sleep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from bastion.exceptions import ConfigurationError, StoreDataError
from bastion.stores import Store

if TYPE_CHECKING:
    from bastion._clock import ManualClock

pytestmark = pytest.mark.anyio

SHORT_TTL_S = 0.1


async def _outlive(store: Store, clock: ManualClock, ttl_s: float) -> None:
    """Let ``ttl_s`` pass for ``store``: advance the manual clock, or really wait for Redis."""
    if store.name == "memory":
        clock.advance(ttl_s)
    else:
        # Redis expires a key exactly at its deadline on its own clock; the margin covers the
        # scheduling jitter of this sleep.
        await anyio.sleep(ttl_s + 0.02)


async def test_store_implements_the_protocol(store: Store) -> None:
    """Both stores satisfy the runtime-checkable ``Store`` protocol."""
    assert isinstance(store, Store)


async def test_root_namespace_is_empty(store: Store) -> None:
    """A store that was not namespaced has the empty namespace."""
    assert "" == store.namespace


async def test_get_missing_key_returns_none(store: Store) -> None:
    """Reading a key that was never written gives None."""
    assert None is await store.get("missing")


async def test_set_then_get_round_trips_bytes(store: Store) -> None:
    """Values are arbitrary bytes: every byte value, including NUL and invalid UTF-8."""
    value = bytes(range(256)) * 4
    await store.set("binary", value)
    assert value == await store.get("binary")


async def test_empty_value_is_not_missing(store: Store) -> None:
    """An empty value is stored and read back as b"", distinct from a missing key."""
    await store.set("empty", b"")
    assert b"" == await store.get("empty")


async def test_keys_may_hold_any_text(store: Store) -> None:
    """Keys with spaces, colons and non-ASCII characters work and stay distinct."""
    keys = ["with space", "a:b:c", "ünïcødé-ключ", "emoji-🔑"]
    for index, key in enumerate(keys):
        await store.set(key, str(index).encode())
    assert [b"0", b"1", b"2", b"3"] == [await store.get(key) for key in keys]


async def test_set_replaces_the_value(store: Store) -> None:
    """A second set overwrites the first."""
    await store.set("key", b"first")
    await store.set("key", b"second")
    assert b"second" == await store.get("key")


async def test_set_without_ttl_clears_a_previous_ttl(store: Store) -> None:
    """Like Redis SET, replacing a value without ttl_s drops the old expiry."""
    await store.set("key", b"v1", ttl_s=60)
    await store.set("key", b"v2")
    assert None is await store.ttl("key")


async def test_set_with_ttl_expires(store: Store, manual_clock: ManualClock) -> None:
    """A value written with ttl_s is readable until the TTL passes, then it is gone."""
    await store.set("key", b"value", ttl_s=SHORT_TTL_S)
    assert b"value" == await store.get("key")
    await _outlive(store, manual_clock, SHORT_TTL_S)
    assert None is await store.get("key")


async def test_ttl_reports_remaining_seconds(store: Store) -> None:
    """ttl() gives the seconds left, no more than the TTL that was set."""
    await store.set("key", b"value", ttl_s=30)
    remaining = await store.ttl("key")
    assert remaining is not None
    assert 29 < remaining <= 30


async def test_ttl_is_none_for_missing_and_persistent_keys(store: Store) -> None:
    """ttl() is None for a key that does not exist and for one without expiry."""
    await store.set("persistent", b"value")
    assert (None, None) == (await store.ttl("missing"), await store.ttl("persistent"))


async def test_delete_reports_whether_the_key_existed(store: Store) -> None:
    """delete() removes the key and returns True; a second delete returns False."""
    await store.set("key", b"value")
    assert (True, False) == (await store.delete("key"), await store.delete("key"))
    assert None is await store.get("key")


async def test_delete_of_expired_key_returns_false(store: Store, manual_clock: ManualClock) -> None:
    """An expired key no longer exists, so deleting it reports False."""
    await store.set("key", b"value", ttl_s=SHORT_TTL_S)
    await _outlive(store, manual_clock, SHORT_TTL_S)
    assert False is await store.delete("key")


async def test_set_nx_stores_only_when_missing(store: Store) -> None:
    """set_nx() writes a missing key and refuses to overwrite an existing one."""
    assert True is await store.set_nx("lock", b"first")
    assert False is await store.set_nx("lock", b"second")
    assert b"first" == await store.get("lock")


async def test_set_nx_applies_its_ttl(store: Store) -> None:
    """The TTL given to a successful set_nx() applies to the key."""
    await store.set_nx("lock", b"owner", ttl_s=30)
    remaining = await store.ttl("lock")
    assert remaining is not None
    assert 29 < remaining <= 30


async def test_set_nx_succeeds_after_expiry(store: Store, manual_clock: ManualClock) -> None:
    """Once a key has expired, set_nx() can claim it again."""
    assert True is await store.set_nx("lock", b"first", ttl_s=SHORT_TTL_S)
    await _outlive(store, manual_clock, SHORT_TTL_S)
    assert True is await store.set_nx("lock", b"second")
    assert b"second" == await store.get("lock")


async def test_set_nx_has_exactly_one_winner_under_contention(store: Store) -> None:
    """Of 100 concurrent set_nx() calls on one key, exactly one succeeds."""
    results: list[bool] = []

    async def claim(index: int) -> None:
        results.append(await store.set_nx("lock", str(index).encode(), ttl_s=30))

    async with anyio.create_task_group() as tg:
        for index in range(100):
            tg.start_soon(claim, index)
    assert 1 == results.count(True)


async def test_incr_creates_a_missing_key_at_amount(store: Store) -> None:
    """incr() on a missing key starts from 0, and the value reads back as decimal bytes."""
    assert 5 == await store.incr("counter", 5)
    assert b"5" == await store.get("counter")


async def test_incr_accumulates_and_accepts_negative_amounts(store: Store) -> None:
    """Successive incr() calls add up; a negative amount decrements."""
    assert [1, 2, 12, 9] == [
        await store.incr("counter"),
        await store.incr("counter"),
        await store.incr("counter", 10),
        await store.incr("counter", -3),
    ]


async def test_incr_works_on_a_value_written_by_set(store: Store) -> None:
    """A decimal value written with set() can be incremented."""
    await store.set("counter", b"41")
    assert 42 == await store.incr("counter")


async def test_incr_sets_ttl_when_it_creates_the_key(store: Store) -> None:
    """The first incr() with ttl_s gives the counter that expiry."""
    await store.incr("counter", ttl_s=30)
    remaining = await store.ttl("counter")
    assert remaining is not None
    assert 29 < remaining <= 30


async def test_incr_keeps_the_original_ttl_of_an_existing_key(store: Store) -> None:
    """A later incr() with another ttl_s does not move the expiry (a fixed window stays fixed)."""
    await store.incr("counter", ttl_s=30)
    await store.incr("counter", ttl_s=300)
    remaining = await store.ttl("counter")
    assert remaining is not None
    assert remaining <= 30


async def test_incr_does_not_add_ttl_to_an_existing_persistent_key(store: Store) -> None:
    """ttl_s applies only on creation, even if the existing key never expires."""
    await store.set("counter", b"5")
    assert 6 == await store.incr("counter", ttl_s=30)
    assert None is await store.ttl("counter")


async def test_incr_without_ttl_never_expires(store: Store) -> None:
    """A counter created without ttl_s has no expiry."""
    await store.incr("counter")
    assert None is await store.ttl("counter")


async def test_incr_treats_a_zero_counter_as_existing(store: Store) -> None:
    """A counter that went back to 0 still exists: incr() must not reset its expiry."""
    await store.incr("counter", 1, ttl_s=30)
    await store.incr("counter", -1)
    assert 0 == int(await store.get("counter") or b"-1")
    await store.incr("counter", 0, ttl_s=300)
    remaining = await store.ttl("counter")
    assert remaining is not None
    assert remaining <= 30


async def test_incr_restarts_after_expiry(store: Store, manual_clock: ManualClock) -> None:
    """When the counter's TTL passes, the next incr() starts a new counter with a new TTL."""
    await store.incr("counter", 5, ttl_s=SHORT_TTL_S)
    await _outlive(store, manual_clock, SHORT_TTL_S)
    assert 1 == await store.incr("counter", ttl_s=30)
    remaining = await store.ttl("counter")
    assert remaining is not None
    assert remaining > 29


@pytest.mark.parametrize("value", [b"abc", b"1.5", b" 1", b"+1", b"01", b"1_000", b""])
async def test_incr_on_a_non_integer_raises_store_data_error(store: Store, value: bytes) -> None:
    """Only canonical decimal integers can be incremented; the value is left unchanged."""
    await store.set("counter", value)
    with pytest.raises(StoreDataError):
        await store.incr("counter")
    assert value == await store.get("counter")


async def test_incr_with_ttl_on_a_non_integer_raises_store_data_error(store: Store) -> None:
    """The ttl_s path (a Lua script on Redis) reports a non-integer the same way."""
    await store.set("counter", b"abc")
    with pytest.raises(StoreDataError):
        await store.incr("counter", ttl_s=30)
    assert None is await store.ttl("counter")


async def test_incr_beyond_64_bits_raises_store_data_error(store: Store) -> None:
    """Counters are signed 64-bit, as in Redis: overflowing raises and keeps the old value."""
    await store.set("counter", str(2**63 - 1).encode())
    with pytest.raises(StoreDataError):
        await store.incr("counter")
    assert str(2**63 - 1).encode() == await store.get("counter")


@pytest.mark.parametrize("ttl_s", [None, 60.0], ids=["no-ttl", "ttl"])
async def test_concurrent_incr_sums_exactly(store: Store, ttl_s: float | None) -> None:
    """200 tasks incrementing one counter at once lose no update."""
    results: list[int] = []

    async def bump() -> None:
        results.append(await store.incr("counter", ttl_s=ttl_s))

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(bump)
    assert b"200" == await store.get("counter")
    assert list(range(1, 201)) == sorted(results)


async def test_expire_sets_a_ttl_and_reports_existence(store: Store) -> None:
    """expire() gives an existing key a TTL and returns True; a missing key returns False."""
    await store.set("key", b"value")
    assert (True, False) == (await store.expire("key", 30), await store.expire("missing", 30))
    remaining = await store.ttl("key")
    assert remaining is not None
    assert 29 < remaining <= 30


async def test_expire_makes_the_key_expire(store: Store, manual_clock: ManualClock) -> None:
    """A key given a TTL by expire() disappears after it."""
    await store.set("key", b"value")
    await store.expire("key", SHORT_TTL_S)
    await _outlive(store, manual_clock, SHORT_TTL_S)
    assert None is await store.get("key")


@pytest.mark.parametrize("ttl_s", [0, -1.0, float("inf"), float("nan")])
async def test_ttl_must_be_positive_and_finite(store: Store, ttl_s: float) -> None:
    """A TTL that is zero, negative or not finite is a programming error: ValueError."""
    with pytest.raises(ValueError, match="ttl_s"):
        await store.set("key", b"value", ttl_s=ttl_s)
    with pytest.raises(ValueError, match="ttl_s"):
        await store.set_nx("key", b"value", ttl_s=ttl_s)
    with pytest.raises(ValueError, match="ttl_s"):
        await store.incr("key", ttl_s=ttl_s)
    with pytest.raises(ValueError, match="ttl_s"):
        await store.expire("key", ttl_s)
    assert None is await store.get("key")


async def test_sub_millisecond_ttl_is_accepted(store: Store) -> None:
    """A tiny positive TTL is valid; Redis rounds it up to its 1 ms resolution."""
    await store.set("key", b"value", ttl_s=0.0001)
    remaining = await store.ttl("key")
    assert remaining is None or remaining <= 0.001


async def test_namespaces_isolate_keys(store: Store) -> None:
    """The same key in two namespaces, and in the root, holds three separate values."""
    first, second = store.with_namespace("first"), store.with_namespace("second")
    await store.set("key", b"root")
    await first.set("key", b"first")
    await second.set("key", b"second")
    assert [b"root", b"first", b"second"] == [
        await store.get("key"),
        await first.get("key"),
        await second.get("key"),
    ]


async def test_namespaces_nest(store: Store) -> None:
    """with_namespace() on a view nests: "a" then "b" is "a:b", isolated from "a"."""
    outer = store.with_namespace("a")
    inner = outer.with_namespace("b")
    await inner.set("key", b"inner")
    assert ("a:b", None, b"inner") == (
        inner.namespace,
        await outer.get("key"),
        await inner.get("key"),
    )


async def test_views_of_one_namespace_share_data(store: Store) -> None:
    """Two views of the same namespace see each other's writes; they are views, not copies."""
    await store.with_namespace("shared").set("key", b"value")
    assert b"value" == await store.with_namespace("shared").get("key")


async def test_operations_stay_inside_the_namespace(store: Store) -> None:
    """delete, incr, set_nx, expire and ttl on a view never touch the root's key of that name."""
    view = store.with_namespace("view")
    await store.set("key", b"7")
    assert (False, 1, True, False) == (
        await view.delete("key"),
        await view.incr("key"),
        await view.set_nx("other", b"x"),
        await view.expire("missing", 30),
    )
    assert (b"7", None, None) == (
        await store.get("key"),
        await store.get("other"),
        await store.ttl("key"),
    )


async def test_empty_namespace_is_rejected(store: Store) -> None:
    """An empty namespace would silently alias the parent's keys, so it is refused."""
    with pytest.raises(ConfigurationError):
        store.with_namespace("")


async def test_closing_a_view_leaves_the_store_usable(store: Store) -> None:
    """A namespaced view does not own the backend: its aclose() closes nothing."""
    view = store.with_namespace("feature")
    await view.aclose()
    await store.set("key", b"value")
    assert b"value" == await store.get("key")


async def test_ping_succeeds_on_a_healthy_store(store: Store) -> None:
    """ping() returns quietly when the store answers."""
    await store.ping()
