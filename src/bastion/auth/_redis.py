"""``RedisKeyRecords``: API key records in Redis, one hash per key, updated by Lua scripts.

Keys live under the store's prefix and the ``auth`` namespace: ``{prefix}:auth:{keys}:<id>``
for a record and ``{prefix}:auth:{keys}`` for the set of ids. The hash tag ``{keys}`` puts them
all in one Redis Cluster slot, so the rotation script can touch two records and the index.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, cast

from bastion.auth._keys import ApiKeyRecord
from bastion.auth._records import CreateResult
from bastion.exceptions import ConfigurationError, StoreDataError

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from bastion.stores.gate import GateGuard
    from bastion.stores.redis import RedisStore

__all__ = ["RETENTION_S", "RedisKeyRecords"]

RETENTION_S = 30 * 24 * 3600.0
"""How long an expired or revoked key's record is kept by default: 30 days."""


def _script(name: str) -> str:
    return resources.files("bastion.auth").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


# The retention rule is shared by the scripts that can end a key's life (see _retire.lua).
_RETIRE = _script("_retire")
_CREATE = _RETIRE + _script("create")
_REVOKE = _RETIRE + _script("revoke")
_TOUCH = _script("touch")
_CREATED: dict[int, CreateResult] = {1: "created", 0: "id_taken", -1: "no_such_key", -2: "revoked"}


class RedisKeyRecords:
    """Key records in Redis, shared by every worker and host that uses the store.

    A record that can no longer authenticate, past its expiry or revoked, stays for
    ``retention_s`` (for ``bastion keys list`` and audits), then Redis drops it and ``all`` drops
    its id from the index: the store does not keep every key ever made.

    Args:
        store: a ``RedisStore`` (normally its ``auth`` namespace); its client, key prefix and
            health gate are used, so failures are ``StoreError`` and heal with the store.
        retention_s: how long an expired or revoked key's record is kept.
    """

    __slots__ = (
        "_create",
        "_guard",
        "_index",
        "_retention",
        "_revoke",
        "_touch",
        "client",
        "key_prefix",
    )

    name = "redis"

    def __init__(self, store: RedisStore, *, retention_s: float = RETENTION_S) -> None:
        if not retention_s > 0:
            raise ConfigurationError(f"retention_s must be positive, not {retention_s}")
        self._retention = repr(float(retention_s))
        client = store.client
        self.client = client
        self.key_prefix = store.key_prefix + "{keys}"
        """What every key written starts with (the index itself is exactly this)."""
        self._index = self.key_prefix
        self._guard: GateGuard = store.guard
        self._create: AsyncScript = client.register_script(_CREATE)
        self._revoke: AsyncScript = client.register_script(_REVOKE)
        self._touch: AsyncScript = client.register_script(_TOUCH)

    def _key(self, key_id: str) -> str:
        return f"{self.key_prefix}:{key_id}"

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record of ``key_id``, or ``None`` (one ``HGETALL``).

        Raises:
            StoreError: Redis failed, or the hash is not a key record (``StoreDataError``).
        """
        with self._guard:
            fields = await self.client.hgetall(self._key(key_id))
        return _record(key_id, fields) if fields else None

    async def all(self) -> list[ApiKeyRecord]:
        """Every record (the index, then one pipelined ``HGETALL`` per key)."""
        with self._guard:
            members = cast("set[bytes]", await self.client.smembers(self._index))
            ids = sorted(member.decode() for member in members)
            async with self.client.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self._key(key_id))  # type: ignore[unused-awaitable]
                rows = await pipe.execute()
            gone = [key_id for key_id, fields in zip(ids, rows, strict=True) if not fields]
            if gone:  # records Redis dropped after their retention: forget their ids too
                await self.client.srem(self._index, *gone)
        return [_record(key_id, fields) for key_id, fields in zip(ids, rows, strict=True) if fields]

    async def create(
        self, record: ApiKeyRecord, *, replacing: str | None = None, replaced_until: float = 0.0
    ) -> CreateResult:
        """Store a new record, and mark the one it replaces, in one script run."""
        keys = [self._key(record.id), self._index]
        if replacing is not None:
            keys.append(self._key(replacing))
        # The record's creation time is "now" on the caller's clock, the one its times use.
        args = [record.id, repr(replaced_until), self._retention, repr(record.created)]
        for name, value in record.to_fields().items():
            args += (name, value)
        with self._guard:
            result = await self._create(keys=keys, args=args)
        return _CREATED[int(result)]

    async def revoke(self, key_id: str, at: float) -> bool:
        """Mark the key revoked (the first time stays); whether it exists."""
        with self._guard:
            result = await self._revoke(keys=[self._key(key_id)], args=[repr(at), self._retention])
        return bool(result)

    async def touch(self, key_id: str, at: float) -> None:
        """Move the key's last-used time forward to ``at``."""
        with self._guard:
            await self._touch(keys=[self._key(key_id)], args=[repr(at)])


def _record(key_id: str, raw: object) -> ApiKeyRecord:
    pairs = cast("dict[bytes, bytes]", raw).items()
    fields = {name.decode(): value.decode() for name, value in pairs}
    try:
        return ApiKeyRecord.from_fields(key_id, fields)
    except (KeyError, ValueError) as exc:
        raise StoreDataError(f"API key record {key_id!r} is damaged: {exc!r}") from None
