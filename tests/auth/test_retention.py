"""Key records that can no longer authenticate leave Redis after their retention period."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.auth import ApiKeys
from bastion.auth._redis import RETENTION_S, RedisKeyRecords
from bastion.exceptions import ConfigurationError
from bastion.stores.redis import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

DAY = 86_400.0


def records_of(keys: ApiKeys) -> RedisKeyRecords:
    """The Redis records behind ``keys``."""
    records = keys.records
    assert isinstance(records, RedisKeyRecords)
    return records


NO_EXPIRY = -1.0


async def ttl_s(keys: ApiKeys, key_id: str) -> float:
    """Seconds until Redis drops the record of ``key_id``; ``NO_EXPIRY`` when it never does."""
    records = records_of(keys)
    milliseconds = int(await records.client.pttl(f"{records.key_prefix}:{key_id}"))
    assert milliseconds != -2, "the record is missing"
    return NO_EXPIRY if milliseconds == -1 else milliseconds / 1000


@pytest.fixture
def keys(redis_store: RedisStore, manual_clock: ManualClock) -> ApiKeys:
    """API keys on Redis, on the manual clock."""
    return ApiKeys(redis_store, clock=manual_clock)


async def test_a_key_that_never_expires_is_kept(keys: ApiKeys) -> None:
    """A live key without an expiry has no Redis expiry either."""
    new = await keys.create("ci")
    assert NO_EXPIRY == await ttl_s(keys, new.record.id)


async def test_an_expiring_key_is_kept_for_the_retention_after_its_end(keys: ApiKeys) -> None:
    """Its record outlives its expiry by the retention period, then Redis drops it."""
    new = await keys.create("temp", expires_in_s=DAY)
    assert DAY + RETENTION_S - 5 < await ttl_s(keys, new.record.id) <= DAY + RETENTION_S


async def test_a_revoked_key_is_kept_for_the_retention_after_revocation(
    keys: ApiKeys, manual_clock: ManualClock
) -> None:
    """Revocation starts the retention period (counted on the caller's clock)."""
    new = await keys.create("ci")
    manual_clock.advance(DAY)
    assert await keys.revoke(new.record.id)
    left = await ttl_s(keys, new.record.id)
    assert RETENTION_S - 5 < left <= RETENTION_S


async def test_a_rotated_key_leaves_after_its_overlap_and_the_retention(keys: ApiKeys) -> None:
    """The replaced key's record lasts its overlap plus the retention; the new one is kept."""
    old = await keys.create("billing")
    new = await keys.rotate(old.record.id, overlap_s=DAY)
    assert DAY + RETENTION_S - 5 < await ttl_s(keys, old.record.id) <= DAY + RETENTION_S
    assert NO_EXPIRY == await ttl_s(keys, new.record.id)


async def test_listing_forgets_the_ids_of_dropped_records(keys: ApiKeys) -> None:
    """Once Redis dropped a record, list() no longer shows it and the index forgets its id."""
    kept = await keys.create("kept")
    dropped = await keys.create("dropped")
    records = records_of(keys)
    await records.client.delete(f"{records.key_prefix}:{dropped.record.id}")  # as expiry would
    assert [kept.record.id] == [record.id for record in await keys.list()]
    members = await records.client.smembers(records.key_prefix)
    assert {kept.record.id.encode()} == members


def test_retention_must_be_positive(redis_store: RedisStore) -> None:
    """A retention of zero would drop revoked keys before anyone could see them."""
    with pytest.raises(ConfigurationError, match="retention_s"):
        RedisKeyRecords(redis_store, retention_s=0)
