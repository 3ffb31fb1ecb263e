"""``ApiKeys``: create, verify, rotate and revoke API keys stored as hashes.

Verification costs no store round trip while a key's record is cached (at most ``cache_s``,
which is at most one second, so a revocation reaches every worker within a second), and one
``HGETALL`` otherwise; concurrent lookups of one key share that call. The last-used time is
written at most once per ``last_used_interval_s`` per key and worker.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.auth._keys import DEFAULT_PREFIX, ApiKeyRecord, KeyParser, digest, generate_key
from bastion.auth._principal import Principal
from bastion.auth._records import KeyRecords, key_records_for
from bastion.events import AuthStoreFailure
from bastion.exceptions import (
    AuthUnavailable,
    ConfigurationError,
    InvalidCredentials,
    StoreError,
)

if TYPE_CHECKING:
    from bastion.events import Hooks
    from bastion.settings import AuthSettings
    from bastion.stores import Store

__all__ = ["ApiKeys", "KeyOnStoreError", "NewApiKey"]

logger = logging.getLogger("bastion.auth")

KeyOnStoreError = Literal["fail_closed", "serve_stale"]
"""When the key store cannot be read: refuse with 503 (``fail_closed``), or accept a key whose
record this worker read within ``stale_s`` (``serve_stale``)."""

_POLICIES: tuple[KeyOnStoreError, ...] = ("fail_closed", "serve_stale")
_CREATE_ATTEMPTS = 3  # a 64-bit id collides with negligible probability; retried all the same
_INVALID_DETAIL = "The API key is invalid, expired or revoked."


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A key just created: the only time its plaintext exists. Show it once; never log it."""

    key: str = field(repr=False)
    """The key to hand to the client (``bst_<id>_<secret>``)."""
    record: ApiKeyRecord
    """What the store keeps (no secret)."""


class _Cached:
    __slots__ = ("fetched_at", "record")

    def __init__(self, record: ApiKeyRecord | None, fetched_at: float) -> None:
        self.record = record
        self.fetched_at = fetched_at


class ApiKeys:
    """API keys: hashed at rest, scoped, expiring, rotatable, revocable, with last-used times.

    Example::

        keys = ApiKeys(RedisStore.from_url("redis://localhost:6379/0"))
        new = await keys.create("billing", scopes=["invoices:read"], expires_in_s=90 * 86400)
        print(new.key)                           # shown once: only its hash is stored
        principal = await keys.verify(new.key)   # Principal(id="key:<id>", ...)

    Args:
        store: bastion's store: records live in its Redis when it is a ``RedisStore``, else in
            this process's memory.
        records: where records live, instead of deriving it from ``store``.
        prefix: the first part of every key; keys with another prefix are refused.
        cache_s: how long a record read from the store is reused (0 to 1 second).
        last_used_interval_s: least time between two last-used writes for one key (per worker).
        on_store_error: ``fail_closed`` (503) or ``serve_stale`` (see ``KeyOnStoreError``).
        stale_s: oldest record ``serve_stale`` may use.
        hooks: where ``AuthStoreFailure`` is published.
        clock: ``monotonic()`` ages the cache; ``time()`` stamps records and decides expiry.
        max_cached: most records (and unknown ids) a worker keeps.

    Raises:
        ConfigurationError: for an option out of range or an invalid prefix.
    """

    __slots__ = (
        "_cache",
        "_cache_s",
        "_clock",
        "_hooks",
        "_inflight",
        "_interval_s",
        "_max_cached",
        "_outage",
        "_parser",
        "_stale_s",
        "_touched",
        "on_store_error",
        "records",
    )

    def __init__(
        self,
        store: Store | None = None,
        *,
        records: KeyRecords | None = None,
        prefix: str = DEFAULT_PREFIX,
        cache_s: float = 1.0,
        last_used_interval_s: float = 60.0,
        on_store_error: KeyOnStoreError = "fail_closed",
        stale_s: float = 300.0,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_cached: int = 10_000,
    ) -> None:
        if not 0 <= cache_s <= 1:
            raise ConfigurationError(
                f"cache_s must be between 0 and 1 second, not {cache_s}: a revoked key must be "
                "refused by every worker within a second"
            )
        if not last_used_interval_s > 0:
            raise ConfigurationError(
                f"last_used_interval_s must be positive, not {last_used_interval_s}"
            )
        if on_store_error not in _POLICIES:
            raise ConfigurationError(
                f"unknown on_store_error {on_store_error!r}; use one of {', '.join(_POLICIES)}"
            )
        if not stale_s > 0 or max_cached < 1:
            raise ConfigurationError("stale_s and max_cached must be positive")
        self.records: KeyRecords = records if records is not None else key_records_for(store)
        self._parser = KeyParser(prefix)
        self._cache_s = cache_s
        self._interval_s = last_used_interval_s
        self.on_store_error: KeyOnStoreError = on_store_error
        self._stale_s = stale_s
        self._hooks = hooks
        self._clock = clock
        self._max_cached = max_cached
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._touched: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        self._outage = False

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        store: Store | None = None,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> ApiKeys:
        """The key manager ``Settings.auth`` describes, its records in ``store``."""
        return cls(
            store,
            prefix=settings.api_key_prefix,
            cache_s=settings.cache_s,
            last_used_interval_s=settings.last_used_interval_s,
            on_store_error=settings.on_store_error,
            stale_s=settings.stale_s,
            hooks=hooks,
            clock=clock,
        )

    @property
    def prefix(self) -> str:
        """The prefix of the keys this manager creates and accepts."""
        return self._parser.prefix

    def looks_like_key(self, value: str) -> bool:
        """Whether ``value`` starts like one of these keys (``bst_``), to tell keys from JWTs."""
        return self._parser.looks_like_key(value)

    def public_id(self, key: str) -> str | None:
        """The id of a well-formed key (public: it alone authenticates nothing), else ``None``."""
        try:
            return self._parser.key_id(key)
        except InvalidCredentials:
            return None

    # -- management -----------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] = (),
        expires_in_s: float | None = None,
    ) -> NewApiKey:
        """Create a key. Its plaintext is in the result and nowhere else.

        Args:
            name: who or what the key is for (shown by ``bastion keys list``).
            scopes: what the key may do.
            expires_in_s: lifetime in seconds; ``None`` for a key that never expires.

        Raises:
            ValueError: for an empty name, a scope with spaces, or a non-positive lifetime.
            StoreError: the store failed; no key was created.
        """
        return await self._create(name, scopes, expires_in_s, replacing=None, overlap_s=0.0)

    async def add(
        self,
        key: str,
        *,
        name: str,
        scopes: Iterable[str] = (),
        expires_in_s: float | None = None,
    ) -> ApiKeyRecord:
        """Store a key made elsewhere (``generate_key``, a secrets manager), by its hash only.

        Idempotent: adding a key that is already stored returns its record unchanged, so every
        worker of an app may add the same provisioned key at startup.

        Raises:
            InvalidCredentials: ``key`` is not a well-formed key of this prefix.
            ValueError: another key has the same id, or an option is invalid.
            StoreError: the store failed.
        """
        key_id = self._parser.key_id(key)
        record = _new_record(key, key_id, name, scopes, expires_in_s, self._clock.time())
        if await self.records.create(record) == "created":
            return record
        existing = await self.records.get(key_id)
        if existing is None or not hmac.compare_digest(existing.digest, record.digest):
            raise ValueError(f"another key already has the id {key_id}")
        return existing

    async def rotate(
        self,
        key_id: str,
        *,
        overlap_s: float = 86_400.0,
        expires_in_s: float | None = None,
    ) -> NewApiKey:
        """Create the replacement of a key; the old one stays valid for ``overlap_s`` more.

        The new key has the old one's name and scopes, and by default its lifetime (none if it
        had none). The old key expires after the overlap, or earlier if it was due to.

        Raises:
            KeyError: no such key.
            ValueError: the key is revoked (revocation is final), or an option is invalid.
            StoreError: the store failed; nothing changed.
        """
        if overlap_s < 0:
            raise ValueError(f"overlap_s must not be negative, not {overlap_s}")
        old = await self.records.get(key_id)
        if old is None:
            raise KeyError(key_id)
        if old.revoked is not None:
            raise ValueError(f"key {key_id} is revoked; create a new key instead")
        if expires_in_s is None and old.expires is not None:
            expires_in_s = max(old.expires - old.created, 1.0)
        return await self._create(
            old.name, old.scopes, expires_in_s, replacing=key_id, overlap_s=overlap_s
        )

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key for good: every worker refuses it within ``cache_s``. Whether it exists.

        Raises:
            StoreError: the store failed; the key may still be valid.
        """
        revoked = await self.records.revoke(key_id, self._clock.time())
        self._cache.pop(key_id, None)  # this worker refuses it at once
        return revoked

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record of a key (no secret), or ``None``."""
        return await self.records.get(key_id)

    async def list(self) -> list[ApiKeyRecord]:
        """Every key's record, oldest first (no secrets)."""
        return sorted(await self.records.all(), key=lambda record: (record.created, record.id))

    async def _create(
        self,
        name: str,
        scopes: Iterable[str],
        expires_in_s: float | None,
        *,
        replacing: str | None,
        overlap_s: float,
    ) -> NewApiKey:
        now = self._clock.time()
        for _attempt in range(_CREATE_ATTEMPTS):
            key, key_id = generate_key(self.prefix)
            record = _new_record(key, key_id, name, scopes, expires_in_s, now)
            result = await self.records.create(
                record, replacing=replacing, replaced_until=now + overlap_s
            )
            if result == "created":
                if replacing is not None:
                    self._cache.pop(replacing, None)
                return NewApiKey(key, record)
            if result == "no_such_key":
                raise KeyError(replacing)
            if result == "revoked":
                raise ValueError(f"key {replacing} is revoked; create a new key instead")
        raise RuntimeError(f"no free key id after {_CREATE_ATTEMPTS} attempts")  # pragma: no cover

    # -- verification ---------------------------------------------------------------------

    async def verify(self, key: str) -> Principal:
        """The principal of a valid key.

        Raises:
            InvalidCredentials: malformed, unknown, wrong secret, expired or revoked (the
                ``reason`` says which; the client's detail does not).
            AuthUnavailable: the store failed and the outage policy refused.
        """
        key_id = self._parser.key_id(key)
        clock = self._clock
        now = clock.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached.fetched_at < self._cache_s:
            record = cached.record
        else:
            try:
                record = await self._load(key_id)
            except StoreError as exc:
                record = self._outage_record(cached, exc, now)
            else:
                self._remember(key_id, record, now)
        if record is None:
            raise InvalidCredentials("unknown_key", _INVALID_DETAIL)
        refusal = self._refusal(record, key)
        if refusal is not None:
            raise InvalidCredentials(refusal, _INVALID_DETAIL)
        await self._touch(key_id, now)
        return Principal(
            id="key:" + key_id,
            kind="api_key",
            subject=key_id,
            scopes=record.scopes,
            name=record.name,
        )

    def cached_principal_id(self, key: str) -> str | None:
        """The principal id of ``key`` if this worker already knows it to be valid, else
        ``None``: no store call, no event, no last-used write.

        For layers that run before authentication and must not wait on the store (load
        shedding orders its queue with it): a key is answered from the record cache only, with
        the same digest comparison and status checks as ``verify``. A key not cached, or cached
        longer ago than the cache lifetime, is not known.
        """
        try:
            key_id = self._parser.key_id(key)
        except InvalidCredentials:
            return None
        cached = self._cache.get(key_id)
        if cached is None or self._clock.monotonic() - cached.fetched_at >= self._cache_s:
            return None
        record = cached.record
        if record is None or self._refusal(record, key) is not None:
            return None
        return "key:" + key_id

    def _refusal(self, record: ApiKeyRecord, key: str) -> str | None:
        """Why ``key`` is refused given its record (``InvalidCredentials.reason``), or ``None``."""
        # Constant time: how much of the digest matched must not show in the response time.
        if not hmac.compare_digest(record.digest, digest(key)):
            return "wrong_secret"
        status = record.status(self._clock.time())
        if status == "revoked" or status == "expired":
            return status
        return None

    async def _load(self, key_id: str) -> ApiKeyRecord | None:
        """Read a record; concurrent reads of one id share a single store call."""
        pending = self._inflight.get(key_id)
        if pending is None:
            pending = asyncio.ensure_future(self.records.get(key_id))
            self._inflight[key_id] = pending
            pending.add_done_callback(lambda done: self._settled(key_id, done))
        # Shielded: one caller's cancellation must not cancel the read the others wait for.
        return await asyncio.shield(pending)

    def _settled(self, key_id: str, done: asyncio.Future[ApiKeyRecord | None]) -> None:
        if self._inflight.get(key_id) is done:
            del self._inflight[key_id]
        if not done.cancelled():
            done.exception()  # retrieved here, so a read whose callers all left logs nothing

    def _remember(self, key_id: str, record: ApiKeyRecord | None, now: float) -> None:
        cache = self._cache
        cache[key_id] = _Cached(record, now)
        cache.move_to_end(key_id)
        if len(cache) > self._max_cached:
            cache.popitem(last=False)
        if self._outage:
            self._outage = False
            logger.warning("API key store answers again; keys are verified against it")

    def _outage_record(
        self, cached: _Cached | None, exc: StoreError, now: float
    ) -> ApiKeyRecord | None:
        policy = self.on_store_error
        served = (
            policy == "serve_stale"
            and cached is not None
            and cached.record is not None
            and now - cached.fetched_at <= self._stale_s
        )
        if not self._outage:
            self._outage = True
            logger.warning(
                "API key store failed (%s); applying on_store_error=%s until it answers",
                exc,
                policy,
            )
        hooks = self._hooks
        if hooks is not None:
            hooks.publish(
                AuthStoreFailure(
                    store=self.records.name,
                    on_store_error=policy,
                    served_stale=served,
                    error=str(exc),
                )
            )
        if served and cached is not None:
            return cached.record
        raise AuthUnavailable("store_unavailable") from exc

    async def _touch(self, key_id: str, now: float) -> None:
        touched = self._touched
        last = touched.get(key_id)
        if last is not None and now - last < self._interval_s:
            return
        # Claimed before the write, so concurrent requests of a hot key do not all write.
        touched[key_id] = now
        touched.move_to_end(key_id)
        if len(touched) > self._max_cached:
            touched.popitem(last=False)
        try:
            await self.records.touch(key_id, self._clock.time())
        except StoreError as exc:  # a missed last-used write must never refuse a valid key
            logger.debug("could not record the last use of key %s: %s", key_id, exc)


def _new_record(
    key: str,
    key_id: str,
    name: str,
    scopes: Iterable[str],
    expires_in_s: float | None,
    now: float,
) -> ApiKeyRecord:
    """The record of a new key, its options checked.

    Raises:
        ValueError: an empty name, a scope that is empty or holds spaces, a non-positive lifetime.
    """
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    scope_set = frozenset(scopes)
    if any(not scope or any(char.isspace() for char in scope) for scope in scope_set):
        raise ValueError(f"scopes must be non-empty and without spaces: {sorted(scope_set)}")
    if expires_in_s is not None and not expires_in_s > 0:
        raise ValueError(f"expires_in_s must be positive, not {expires_in_s}")
    return ApiKeyRecord(
        id=key_id,
        name=name,
        scopes=scope_set,
        digest=digest(key),
        created=now,
        expires=None if expires_in_s is None else now + expires_in_s,
    )
