"""Where API key records live: the ``KeyRecords`` protocol and its in-process implementation.

The plain ``Store`` protocol has no way to list keys or to update a record in place atomically,
so key records use this extra protocol, with one implementation per backend (the pattern of
DESIGN §5): ``MemoryKeyRecords`` here, ``RedisKeyRecords`` (a hash per key, Lua for updates) in
``_redis``. ``key_records_for(store)`` picks the one matching bastion's configured store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

from bastion.auth._keys import ApiKeyRecord
from bastion.exceptions import ConfigurationError

if TYPE_CHECKING:
    from bastion.stores import Store

__all__ = ["CreateResult", "KeyRecords", "MemoryKeyRecords", "key_records_for"]

CreateResult = Literal["created", "id_taken", "no_such_key", "revoked"]
"""Outcome of ``KeyRecords.create``: only ``created`` wrote anything."""


class KeyRecords(Protocol):
    """API key records by id. Every method may raise ``StoreError``."""

    @property
    def name(self) -> str:
        """The backend's name (``"memory"``, ``"redis"``), for events and messages."""
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record of ``key_id``, or ``None``."""
        ...

    async def all(self) -> list[ApiKeyRecord]:
        """Every record, in no particular order."""
        ...

    async def create(
        self, record: ApiKeyRecord, *, replacing: str | None = None, replaced_until: float = 0.0
    ) -> CreateResult:
        """Store a new record; with ``replacing``, also mark that key replaced, atomically.

        The replaced key gets ``replaced_by = record.id`` and expires at ``replaced_until`` at
        the latest. Nothing is written unless the result is ``"created"``.
        """
        ...

    async def revoke(self, key_id: str, at: float) -> bool:
        """Mark the key revoked at ``at`` (the first revocation time stays); whether it exists."""
        ...

    async def touch(self, key_id: str, at: float) -> None:
        """Set the key's last-used time to ``at`` unless it is already later."""
        ...


class MemoryKeyRecords:
    """Key records in this process's memory: for tests and single-process apps.

    They die with the process, and other workers never see them. Every method completes
    without awaiting, so each is atomic on the event loop.
    """

    __slots__ = ("_records",)

    name = "memory"

    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record of ``key_id``, or ``None``."""
        return self._records.get(key_id)

    async def all(self) -> list[ApiKeyRecord]:
        """Every record."""
        return list(self._records.values())

    async def create(
        self, record: ApiKeyRecord, *, replacing: str | None = None, replaced_until: float = 0.0
    ) -> CreateResult:
        """Store a new record, and mark the one it replaces (see ``KeyRecords.create``)."""
        records = self._records
        if record.id in records:
            return "id_taken"
        if replacing is not None:
            old = records.get(replacing)
            if old is None:
                return "no_such_key"
            if old.revoked is not None:
                return "revoked"
            expires = replaced_until if old.expires is None else min(old.expires, replaced_until)
            records[replacing] = old.with_changes(expires=expires, replaced_by=record.id)
        records[record.id] = record
        return "created"

    async def revoke(self, key_id: str, at: float) -> bool:
        """Mark the key revoked; whether it exists."""
        old = self._records.get(key_id)
        if old is None:
            return False
        if old.revoked is None:
            self._records[key_id] = old.with_changes(revoked=at)
        return True

    async def touch(self, key_id: str, at: float) -> None:
        """Move the key's last-used time forward to ``at``."""
        old = self._records.get(key_id)
        if old is not None and (old.last_used is None or old.last_used < at):
            self._records[key_id] = old.with_changes(last_used=at)


def key_records_for(store: Store | None) -> KeyRecords:
    """The key records that live in ``store``: Redis for a ``RedisStore``, else process memory.

    Raises:
        ConfigurationError: if a store named ``redis`` is not a ``RedisStore``.
    """
    if store is not None and store.name == "redis":
        from bastion.auth._redis import RedisKeyRecords  # the redis extra, only when used
        from bastion.stores.redis import RedisStore

        if not isinstance(store, RedisStore):
            raise ConfigurationError(f"a store named 'redis' must be a RedisStore: {store!r}")
        return RedisKeyRecords(store.with_namespace("auth"))
    return MemoryKeyRecords()
