"""``RedisStore``: the cluster-wide store, on ``redis.asyncio``.

Every operation is one round trip. ``set_nx`` is ``SET NX PX`` and ``incr`` with a TTL is one Lua
script (``lua/incr_expire.lua``), so both are atomic across workers and hosts. Every redis
exception is translated at this boundary to a ``StoreError``, raised ``from`` the original. All
operations pass through a ``StoreHealthGate``, so an outage costs ``failure_threshold`` timeouts
and then fails fast, instead of one timeout per request.

Ownership follows who created the client. ``RedisStore(client)`` borrows it and never closes it.
``RedisStore.from_url(url)`` creates its own pool and closes it in ``aclose``::

    async with RedisStore.from_url("redis://localhost:6379/0") as store:
        sessions = store.with_namespace("sessions")
        await sessions.set("abc", b"...", ttl_s=3600)
"""

from __future__ import annotations

import math
from importlib import resources
from typing import TYPE_CHECKING, Self, cast

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._urls import redact_url
from bastion.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    StoreBusy,
    StoreDataError,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from bastion.stores._batch import CommandBatcher
from bastion.stores.base import ClosingMixin
from bastion.stores.gate import StoreHealthGate

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("redis", "redis") from exc

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from bastion.events import Hooks
    from bastion.stores.gate import GateGuard, Translate

__all__ = ["RedisStore"]

_INCR_EXPIRE_LUA = (
    resources.files("bastion.stores").joinpath("lua/incr_expire.lua").read_text(encoding="utf-8")
)

# Checked in this order; the first match decides. Builtin TimeoutError is an OSError, so it must
# come before OSError.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (redis_errors.TimeoutError, TimeoutError)
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # refused, reset, auth failed, loading, pool exhausted
    # The server answered, but it cannot serve anyone now: a cluster failing over or resharding,
    # or a replica that refuses writes after a failover. For a caller this is an outage.
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    OSError,  # socket errors that redis-py did not wrap (DNS, TLS)
)
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ResponseError,  # WRONGTYPE, "not an integer", NOSCRIPT, OOM, ACL, script errors
    redis_errors.DataError,  # a value redis-py cannot encode
)


# What redis-py's BlockingConnectionPool raises when no connection came free within its timeout.
_POOL_EXHAUSTED = "No connection available."


def _translate_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> StoreError | None:
    """Map a redis-py (or socket) exception to a ``StoreError``; ``None`` if it is not one.

    ``secrets`` are scrubbed from the message. redis-py does not put passwords in its messages
    today, and this keeps it that way if a future version starts to.
    """
    error_type: type[StoreError]
    if isinstance(exc, redis_errors.ConnectionError) and str(exc) == _POOL_EXHAUSTED:
        error_type, summary = StoreBusy, "no redis connection came free in time"
    elif isinstance(exc, _TIMEOUT_ERRORS):
        error_type, summary = StoreTimeout, "redis timed out"
    elif isinstance(exc, _UNAVAILABLE_ERRORS):
        error_type, summary = StoreUnavailable, "redis is unavailable"
    elif isinstance(exc, _DATA_ERRORS):
        error_type, summary = StoreDataError, "redis rejected the operation"
    elif isinstance(exc, redis_errors.RedisError):
        error_type, summary = StoreError, "redis failed"
    else:
        return None
    detail = str(exc)
    for secret in secrets:
        detail = detail.replace(secret, "****")
    name = type(exc).__name__
    return error_type(f"{summary}: {name}: {detail}" if detail else f"{summary}: {name}")


def _translator(secrets: tuple[str, ...]) -> Translate:
    def translate(exc: BaseException) -> StoreError | None:
        return _translate_error(exc, secrets)

    return translate


def _ms(ttl_s: float) -> int:
    """Convert a TTL to whole milliseconds (at least 1) for PX/PEXPIRE."""
    if not 0 < ttl_s < math.inf:
        raise ValueError(f"ttl_s must be positive and finite, not {ttl_s}")
    # Round rather than ceil: 1.1 * 1000 is 1100.0000000000002 in binary floating point.
    return max(1, round(ttl_s * 1000))


def _check_gate_options(hooks: Hooks | None, clock: Clock) -> None:
    # With an explicit gate these would be silently ignored; refusing them says where they go.
    if hooks is not None or clock is not SYSTEM_CLOCK:
        raise ConfigurationError(
            "pass hooks and clock to the StoreHealthGate itself when you give RedisStore a gate"
        )


def _key_prefix(prefix: str, namespace: str) -> str:
    parts = [part for part in (prefix, namespace) if part]
    return ":".join(parts) + ":" if parts else ""


class RedisStore(ClosingMixin):
    """A ``Store`` on Redis: cluster-wide, atomic, and behind a health gate.

    Keys are ``{prefix}:{namespace}:{key}``. Values are stored as they are (bytes), TTLs in
    milliseconds.

    Args:
        client: a ``redis.asyncio.Redis`` to borrow. It must not decode responses. The store never
            closes it. Its retry policy applies. ``Redis(host=...)`` in redis-py 8 retries a failed
            command 10 times with backoff by default, so during an outage one operation can take
            seconds before the health gate even counts a failure. Build the client with
            ``retry=Retry(NoBackoff(), 0)``, or use ``from_url``, which does.
        prefix: the first segment of every key; isolates applications that share a database.
        gate: the health gate to use. By default each store gets its own, shared by all its
            namespaced views.
        hooks: where the default gate publishes ``StoreDown``/``StoreUp``. Only without ``gate``.
        clock: time source of the default gate. Only without ``gate``.

    Raises:
        ConfigurationError: if the client decodes responses, or ``hooks``/``clock`` are given
            together with ``gate``.
    """

    __slots__ = (
        "_batcher",
        "_client",
        "_gate",
        "_guard",
        "_incr_expire",
        "_keys",
        "_namespace",
        "_owns_client",
        "_prefix",
    )

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "bastion",
        gate: StoreHealthGate | None = None,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        connection_kwargs = client.connection_pool.connection_kwargs
        if connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisStore needs a client with decode_responses=False: values are bytes"
            )
        if gate is None:
            gate = StoreHealthGate(clock=clock, hooks=hooks, store_name="redis")
        else:
            _check_gate_options(hooks, clock)
        password = connection_kwargs.get("password")
        secrets = (password,) if isinstance(password, str) and password else ()
        self._client = client
        self._batcher = CommandBatcher(client)
        self._owns_client = False
        self._gate = gate
        self._guard: GateGuard = gate.guard(_translator(secrets))
        # register_script only computes the SHA1. The first call sends EVALSHA, and after a
        # NOSCRIPT (script cache flushed, failover, restart) it loads the script and retries.
        self._incr_expire: AsyncScript = client.register_script(_INCR_EXPIRE_LUA)
        self._prefix = prefix
        self._namespace = ""
        self._keys = _key_prefix(prefix, "")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "bastion",
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.5,
        max_connections: int = 64,
        pool_timeout_s: float = 0.5,
        client_name: str | None = "bastion",
        gate: StoreHealthGate | None = None,
        failure_threshold: int = 3,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Self:
        """Create a store with its own connection pool, closed by ``aclose``.

        The pool holds at most ``max_connections`` connections, and an operation waits up to
        ``pool_timeout_s`` for a free one. A burst larger than the pool queues instead of
        failing. With redis-py's plain pool, such a burst would fail, and the gate would count
        the failures as an outage. Failed commands are not retried, because the health gate is
        the retry policy, and a blind retry could run a non-idempotent ``INCR`` twice.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
                ``unix:///path/to/socket?db=0``. Query parameters are passed to redis-py.
            prefix: the first segment of every key.
            socket_timeout_s: how long one command may wait for its reply.
            connect_timeout_s: how long opening a connection may take.
            max_connections: the pool's size.
            pool_timeout_s: how long an operation may wait for a free connection.
            client_name: shown by ``CLIENT LIST`` on the server; ``None`` to skip ``SETNAME``.
            gate: a health gate to use instead of building one from the next five options.
            failure_threshold: consecutive outages that open the gate.
            base_delay_s: first fail-fast interval of the gate; it doubles per failed probe.
            max_delay_s: the cap on that interval.
            hooks: where the gate publishes ``StoreDown``/``StoreUp``.
            clock: the gate's time source.

        Raises:
            ConfigurationError: if the URL or an option is invalid. The message shows the URL
                with its password masked.
        """
        for option, value in (
            ("socket_timeout_s", socket_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("pool_timeout_s", pool_timeout_s),
            ("max_connections", max_connections),
        ):
            if not value > 0:
                raise ConfigurationError(f"{option} must be positive, not {value}")
        if gate is None:
            gate = StoreHealthGate(
                failure_threshold=failure_threshold,
                base_delay_s=base_delay_s,
                max_delay_s=max_delay_s,
                clock=clock,
                hooks=hooks,
                store_name="redis",
            )
        elif (failure_threshold, base_delay_s, max_delay_s) != (3, 0.5, 30.0):
            raise ConfigurationError(
                "pass failure_threshold, base_delay_s and max_delay_s to the StoreHealthGate "
                "itself when you give RedisStore a gate"
            )
        else:
            _check_gate_options(hooks, clock)
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=pool_timeout_s,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),
                client_name=client_name,
            )
        except (ValueError, TypeError) as exc:
            # The parser's message may quote part of the URL: mask the password in it, and do
            # not chain the original, which would carry it unmasked into tracebacks.
            detail = str(exc)
            password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
            if password:
                detail = detail.replace(password, "****")
            raise ConfigurationError(f"invalid Redis URL {redact_url(url)}: {detail}") from None
        store = cls(Redis.from_pool(pool), prefix=prefix, gate=gate)
        store._owns_client = True
        return store

    @property
    def name(self) -> str:
        """Always ``"redis"``."""
        return "redis"

    @property
    def namespace(self) -> str:
        """The namespace of this view (``""`` for the root)."""
        return self._namespace

    @property
    def client(self) -> Redis:
        """The underlying client, for feature-specific operations. Do not close it."""
        return self._client

    @property
    def batcher(self) -> CommandBatcher:
        """Sends the commands of one event-loop turn as one pipeline (``stores._batch``): what
        feature operations that run once per request use, so that concurrent requests share a
        round trip. Shared by this store and its namespaced views."""
        return self._batcher

    @property
    def gate(self) -> StoreHealthGate:
        """The health gate shared by this store and its namespaced views."""
        return self._gate

    @property
    def key_prefix(self) -> str:
        """What this view puts before every key (prefix and namespaces), for feature scripts
        that build their own keys."""
        return self._keys

    @property
    def guard(self) -> GateGuard:
        """The context manager this store runs every command in: it consults the health gate
        and translates redis errors into ``StoreError``. Feature-specific operations on
        ``client`` use it so that they fail, and heal, like the store's own."""
        return self._guard

    def with_namespace(self, namespace: str) -> Self:
        """Return a view whose keys live under ``namespace``, sharing client, scripts and gate.

        Namespaces nest: ``store.with_namespace("a").with_namespace("b").namespace == "a:b"``.
        A view never closes the client: ``aclose`` on a view does nothing.

        Raises:
            ConfigurationError: if ``namespace`` is empty.
        """
        if not namespace:
            raise ConfigurationError("a store namespace must not be empty")
        view = object.__new__(type(self))
        view._client = self._client
        view._batcher = self._batcher
        view._owns_client = False
        view._gate = self._gate
        view._guard = self._guard
        view._incr_expire = self._incr_expire
        view._prefix = self._prefix
        view._namespace = f"{self._namespace}:{namespace}" if self._namespace else namespace
        view._keys = _key_prefix(self._prefix, view._namespace)
        return view

    async def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or ``None`` if it is missing or expired."""
        with self._guard:
            return cast("bytes | None", await self._client.get(self._keys + key))

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key`` (``SET … PX``), replacing it and any previous expiry."""
        px = None if ttl_s is None else _ms(ttl_s)
        with self._guard:
            await self._client.set(self._keys + key, value, px=px)

    async def set_nx(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is missing (``SET … NX PX``); return whether it was."""
        px = None if ttl_s is None else _ms(ttl_s)
        with self._guard:
            stored = await self._client.set(self._keys + key, value, nx=True, px=px)
        return stored is True

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        with self._guard:
            removed = await self._client.delete(self._keys + key)
        return removed == 1

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add ``amount`` to the integer at ``key``; ``ttl_s`` applies only if this creates it.

        Without ``ttl_s`` this is ``INCRBY``; with it, one Lua script (``EXISTS``, ``INCRBY``,
        ``PEXPIRE`` if created), so the expiry is set atomically with the creation.

        Raises:
            StoreDataError: if the value is not an integer, or the result overflows 64 bits.
        """
        full_key = self._keys + key
        if ttl_s is None:
            with self._guard:
                return await self._client.incrby(full_key, amount)
        px = _ms(ttl_s)
        with self._guard:
            return int(await self._incr_expire(keys=[full_key], args=[amount, px]))

    async def expire(self, key: str, ttl_s: float) -> bool:
        """Make ``key`` expire in ``ttl_s`` seconds (``PEXPIRE``); return whether it exists."""
        px = _ms(ttl_s)
        with self._guard:
            return await self._client.pexpire(self._keys + key, px)

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (``PTTL``); ``None`` if it is missing or never expires."""
        with self._guard:
            remaining_ms = await self._client.pttl(self._keys + key)
        # PTTL answers -2 for a missing key and -1 for a key without expiry.
        return None if remaining_ms < 0 else remaining_ms / 1000

    async def ping(self) -> None:
        """Send ``PING``; raise ``StoreUnavailable`` if Redis or its gate refuses."""
        with self._guard:
            await self._client.ping()

    async def aclose(self) -> None:
        """Close the connection pool if this store created it; otherwise do nothing."""
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisStore(keys={self._keys!r}, owns_client={self._owns_client}, "
            f"gate={self._gate.state!r})"
        )
