"""``ApiKeys`` on memory and on Redis: create, verify, expire, revoke, rotate, last used, cache."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import pytest

from bastion._clock import ManualClock
from bastion.auth import (
    ApiKeyRecord,
    ApiKeys,
    MemoryKeyRecords,
    Principal,
    generate_key,
    key_records_for,
)
from bastion.exceptions import InvalidCredentials

if TYPE_CHECKING:
    from bastion.stores import Store
    from bastion.stores.redis import RedisStore

pytestmark = pytest.mark.anyio


async def refusal(keys: ApiKeys, key: str) -> str:
    """The reason ``keys`` refuses ``key`` (failing if it accepts it)."""
    with pytest.raises(InvalidCredentials) as caught:
        await keys.verify(key)
    return caught.value.reason


async def test_a_created_key_verifies_to_its_principal(keys: ApiKeys) -> None:
    """The principal is key:<id> with the key's scopes and name."""
    new = await keys.create("billing", scopes=["invoices:read", "invoices:write"])
    principal = await keys.verify(new.key)
    expected = Principal(
        id=f"key:{new.record.id}",
        kind="api_key",
        subject=new.record.id,
        scopes=frozenset({"invoices:read", "invoices:write"}),
        name="billing",
    )
    assert expected == principal


async def test_the_new_key_is_not_in_its_repr(keys: ApiKeys) -> None:
    """Printing the result of create() (a log line, a debugger) never shows the key."""
    new = await keys.create("ci")
    assert new.key not in repr(new)
    assert new.record.id in repr(new)


async def test_unknown_ids_and_wrong_secrets_are_refused(keys: ApiKeys) -> None:
    """A well-formed key of no record is unknown_key; a changed secret is wrong_secret."""
    new = await keys.create("ci")
    prefix, key_id, secret = new.key.split("_", 2)
    forged_secret = f"{prefix}_{key_id}_{'A' * 43 if secret != 'A' * 43 else 'B' * 43}"
    forged_id = f"{prefix}_{'f' * 16 if key_id != 'f' * 16 else 'e' * 16}_{secret}"
    assert ("wrong_secret", "unknown_key") == (
        await refusal(keys, forged_secret),
        await refusal(keys, forged_id),
    )


async def test_a_key_expires_at_its_time(keys: ApiKeys, manual_clock: ManualClock) -> None:
    """Valid one second before its lifetime ends, refused from then on."""
    new = await keys.create("temp", expires_in_s=3600)
    manual_clock.advance(3599)
    assert f"key:{new.record.id}" == (await keys.verify(new.key)).id
    manual_clock.advance(1)
    assert "expired" == await refusal(keys, new.key)


async def test_a_revoked_key_is_refused_at_once_by_the_revoking_worker(keys: ApiKeys) -> None:
    """revoke() drops the local cache entry, so no cached record keeps the key alive here."""
    new = await keys.create("ci")
    await keys.verify(new.key)  # cached now
    assert await keys.revoke(new.record.id)
    assert "revoked" == await refusal(keys, new.key)
    assert not await keys.revoke("0" * 16)


async def test_another_worker_refuses_a_revoked_key_within_cache_s(
    store: Store, manual_clock: ManualClock
) -> None:
    """Two managers sharing records: the second sees the revocation once its cache entry ages."""
    shared = key_records_for(store)
    admin = ApiKeys(records=shared, clock=manual_clock)
    worker = ApiKeys(records=shared, clock=manual_clock, cache_s=1.0)
    new = await admin.create("ci")
    await worker.verify(new.key)
    await admin.revoke(new.record.id)
    manual_clock.advance(0.999)
    still_cached = await worker.verify(new.key)
    manual_clock.advance(0.001)
    assert f"key:{new.record.id}" == still_cached.id
    assert "revoked" == await refusal(worker, new.key)


async def test_a_cached_record_costs_no_store_read(
    redis_store: RedisStore, manual_clock: ManualClock
) -> None:
    """Within cache_s a key verifies from memory: the Redis read count does not move."""
    keys = ApiKeys(redis_store, clock=manual_clock, last_used_interval_s=3600)
    new = await keys.create("hot")
    await keys.verify(new.key)
    before = await _redis_reads(redis_store)
    for _ in range(50):
        await keys.verify(new.key)
    assert 0 == await _redis_reads(redis_store) - before


async def _redis_reads(store: RedisStore) -> int:
    stats = await store.client.info("commandstats")
    entry = stats.get("cmdstat_hgetall", {"calls": 0})
    return int(entry["calls"])


async def test_concurrent_verifications_of_one_key_share_one_read(
    manual_clock: ManualClock,
) -> None:
    """100 concurrent first verifications of a key read its record once (single flight)."""
    counting = _CountingRecords()
    keys = ApiKeys(records=counting, clock=manual_clock)
    new = await keys.create("hot")
    principals = await asyncio.gather(*(keys.verify(new.key) for _ in range(100)))
    assert (1, 100) == (counting.reads, sum(p.id == f"key:{new.record.id}" for p in principals))


class _CountingRecords(MemoryKeyRecords):
    """Memory records that count reads and make each read yield to the loop once."""

    __slots__ = ("reads",)

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        self.reads += 1
        await asyncio.sleep(0)
        return await super().get(key_id)


async def test_rotation_keeps_the_old_key_for_the_overlap(
    keys: ApiKeys, manual_clock: ManualClock
) -> None:
    """After rotate(overlap 1 h): both keys work; after the hour only the new one does."""
    old = await keys.create("partner", scopes=["orders:read"])
    new = await keys.rotate(old.record.id, overlap_s=3600)
    assert ("partner", frozenset({"orders:read"})) == (new.record.name, new.record.scopes)
    assert {"rotating", "active"} == {
        record.status(manual_clock.time()) for record in await keys.list()
    }
    assert (f"key:{old.record.id}", f"key:{new.record.id}") == (
        (await keys.verify(old.key)).id,
        (await keys.verify(new.key)).id,
    )
    manual_clock.advance(3600)
    assert "expired" == await refusal(keys, old.key)
    assert f"key:{new.record.id}" == (await keys.verify(new.key)).id


async def test_rotation_never_extends_the_old_key(keys: ApiKeys, manual_clock: ManualClock) -> None:
    """A key due in 10 minutes, rotated with a day of overlap, still ends in 10 minutes; the
    replacement gets the old key's lifetime."""
    old = await keys.create("short", expires_in_s=600)
    new = await keys.rotate(old.record.id, overlap_s=86_400)
    record = await keys.get(old.record.id)
    assert record is not None
    assert (old.record.expires, new.record.id) == (record.expires, record.replaced_by)
    assert manual_clock.time() + 600 == new.record.expires


async def test_rotating_a_missing_or_revoked_key_fails(keys: ApiKeys) -> None:
    """KeyError for an unknown id, ValueError for a revoked key; nothing is created."""
    revoked = await keys.create("gone")
    await keys.revoke(revoked.record.id)
    with pytest.raises(KeyError):
        await keys.rotate("0" * 16)
    with pytest.raises(ValueError, match="revoked"):
        await keys.rotate(revoked.record.id)
    assert [revoked.record.id] == [record.id for record in await keys.list()]


async def test_last_used_is_written_at_most_once_per_interval(
    store: Store, manual_clock: ManualClock
) -> None:
    """Verifications within the interval leave last_used alone; after it, it moves."""
    keys = ApiKeys(store, clock=manual_clock, last_used_interval_s=60)
    new = await keys.create("hot")
    first_use = manual_clock.time()
    await keys.verify(new.key)
    manual_clock.advance(59)
    await keys.verify(new.key)
    record = await keys.get(new.record.id)
    assert record is not None
    assert first_use == record.last_used
    manual_clock.advance(1)
    await keys.verify(new.key)
    record = await keys.get(new.record.id)
    assert record is not None
    assert first_use + 60 == record.last_used


async def test_list_is_oldest_first_and_holds_no_secret(
    keys: ApiKeys, manual_clock: ManualClock
) -> None:
    """Records come back in creation order, and no key text appears in any of them."""
    created = []
    for name in ("a", "b", "c"):
        created.append(await keys.create(name, scopes=["x"]))
        manual_clock.advance(1)
    listed = await keys.list()
    assert ["a", "b", "c"] == [record.name for record in listed]
    text = repr(listed)
    assert [] == [new.key for new in created if new.key in text or new.key.split("_", 2)[2] in text]


@pytest.mark.parametrize(
    ("name", "scopes", "expires_in_s"),
    [("", (), None), ("  ", (), None), ("ok", ("has space",), None), ("ok", ("",), None),
     ("ok", (), 0), ("ok", (), -5)],
)  # fmt: skip
async def test_invalid_key_options_are_refused(
    keys: ApiKeys, name: str, scopes: tuple[str, ...], expires_in_s: float | None
) -> None:
    """Empty names, scopes with spaces and non-positive lifetimes are ValueErrors."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        await keys.create(name, scopes=scopes, expires_in_s=expires_in_s)


async def test_redis_holds_no_plaintext_key(redis_store: RedisStore) -> None:
    """Every key and value under the test prefix, read raw: neither a key nor its secret."""
    keys = ApiKeys(redis_store)
    created = [await keys.create(f"k{n}", scopes=["a", "b"]) for n in range(5)]
    rotated = await keys.rotate(created[0].record.id)
    for new in [*created, rotated]:
        await keys.verify(new.key)
    await keys.revoke(created[1].record.id)
    client = redis_store.client
    dump = b""
    raw_keys = [key async for key in client.scan_iter(match=f"{redis_store.key_prefix}*")]
    for raw in raw_keys:
        kind = await client.type(raw)
        if kind == b"hash":
            fields = cast("dict[bytes, bytes]", await client.hgetall(raw))
            dump += b"".join(field + b"=" + value + b"\n" for field, value in fields.items())
        elif kind == b"set":
            dump += b",".join(cast("set[bytes]", await client.smembers(raw))) + b"\n"
        else:
            dump += cast("bytes | None", await client.get(raw)) or b""
    secrets = [new.key.split("_", 2)[2].encode() for new in [*created, rotated]]
    assert 7 == len(raw_keys)  # six records and the index
    assert [] == [secret for secret in secrets if secret in dump or secret in b"".join(raw_keys)]
    assert all(new.record.digest.encode() in dump for new in created)


async def test_a_provisioned_key_can_be_added_once_and_verifies(keys: ApiKeys) -> None:
    """add() stores a key made elsewhere by its hash; adding it again returns the same record."""
    key, key_id = generate_key()
    first = await keys.add(key, name="provisioned", scopes=["a"])
    again = await keys.add(key, name="renamed", scopes=["b"])
    assert (first, f"key:{key_id}") == (again, (await keys.verify(key)).id)
    assert key not in repr(await keys.list())


async def test_adding_a_different_key_with_a_taken_id_fails(keys: ApiKeys) -> None:
    """Same id, other secret: ValueError, and the stored key is untouched."""
    key, _ = generate_key()
    await keys.add(key, name="original")
    impostor = key[: -len("A" * 43)] + "A" * 43
    with pytest.raises(ValueError, match="another key"):
        await keys.add(impostor, name="impostor")
    with pytest.raises(InvalidCredentials):
        await keys.add("not-a-key", name="x")
    assert "original" == (await keys.verify(key)).name


# -------------------------------------------------------------- known before authentication


async def test_a_key_is_known_without_a_store_call_only_once_verified(
    keys: ApiKeys, manual_clock: ManualClock
) -> None:
    """cached_principal_id answers from the record cache only: nothing before a verification,
    the principal id after it, nothing again once the cache entry is older than cache_s."""
    new = await keys.create("partner")
    before = keys.cached_principal_id(new.key)
    await keys.verify(new.key)
    known = keys.cached_principal_id(new.key)
    manual_clock.advance(1.0)  # the record cache lifetime (cache_s) is 1 s
    stale = keys.cached_principal_id(new.key)
    assert (None, f"key:{new.record.id}", None) == (before, known, stale)


async def test_a_cached_id_never_vouches_for_a_wrong_secret_an_expired_or_revoked_key(
    keys: ApiKeys, manual_clock: ManualClock
) -> None:
    """The cached record is checked like verify() does: digest, expiry, revocation, format."""
    expiring = await keys.create("temp", expires_in_s=0.5)
    revoked = await keys.create("gone")
    for new in (expiring, revoked):
        await keys.verify(new.key)
    prefix, key_id, secret = expiring.key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * 43 if secret != 'A' * 43 else 'B' * 43}"
    await keys.revoke(revoked.record.id)
    answers = [keys.cached_principal_id(key) for key in (forged, revoked.key, "not-a-key")]
    valid = keys.cached_principal_id(expiring.key)
    manual_clock.advance(0.6)  # expired, while its cache entry is still fresh
    answers.append(keys.cached_principal_id(expiring.key))
    assert (f"key:{expiring.record.id}", [None, None, None, None]) == (valid, answers)
