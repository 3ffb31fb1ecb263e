"""Build a store from a URL: the one place that knows which schemes mean which backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._urls import redact_url
from bastion.exceptions import ConfigurationError
from bastion.stores.memory import MemoryStore

if TYPE_CHECKING:
    from bastion.events import Hooks
    from bastion.stores.base import Store

__all__ = ["REDIS_SCHEMES", "store_from_url"]

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
"""URL schemes that select ``RedisStore`` (TCP, TLS, Unix socket)."""


def store_from_url(
    url: str | None,
    *,
    prefix: str = "bastion",
    max_entries: int = 10_000,
    max_bytes: int = 64 * 1024 * 1024,
    socket_timeout_s: float = 0.5,
    connect_timeout_s: float = 0.5,
    max_connections: int = 64,
    pool_timeout_s: float = 0.5,
    failure_threshold: int = 3,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    hooks: Hooks | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Store:
    """Return the store a URL names: ``MemoryStore`` for no URL, ``RedisStore`` for a Redis URL.

    This is how settings turn ``BASTION_REDIS_URL`` into a store. Unset means one process on
    memory; set means state shared through Redis. Each backend takes the options that concern it
    and ignores the others, so a caller can pass everything its settings hold. redis is imported
    only when a Redis URL is given, so the extra is needed only then.

    Example::

        store = store_from_url(os.environ.get("BASTION_REDIS_URL"), hooks=hooks)

    Args:
        url: ``None`` or ``""`` for memory; ``redis://``, ``rediss://`` or ``unix://`` for Redis.
        prefix: Redis key prefix (memory is private to the process and needs none).
        max_entries: memory only, see ``MemoryStore``.
        max_bytes: memory only, see ``MemoryStore``.
        socket_timeout_s: Redis only, see ``RedisStore.from_url``.
        connect_timeout_s: Redis only.
        max_connections: Redis only.
        pool_timeout_s: Redis only.
        failure_threshold: Redis only, for its ``StoreHealthGate``.
        base_delay_s: Redis only, for its ``StoreHealthGate``.
        max_delay_s: Redis only, for its ``StoreHealthGate``.
        hooks: where the Redis store's gate publishes ``StoreDown``/``StoreUp``.
        clock: time source for expiry (memory) or for the health gate (Redis).

    Raises:
        ConfigurationError: if the scheme is not supported, or the URL or an option is invalid.
            The message shows the URL with its password masked.
        MissingDependencyError: if a Redis URL is given and redis is not installed.
    """
    if not url:
        return MemoryStore(max_entries=max_entries, max_bytes=max_bytes, clock=clock)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in REDIS_SCHEMES:
        from bastion.stores.redis import RedisStore  # the redis extra, imported only when used

        return RedisStore.from_url(
            url,
            prefix=prefix,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            failure_threshold=failure_threshold,
            base_delay_s=base_delay_s,
            max_delay_s=max_delay_s,
            hooks=hooks,
            clock=clock,
        )
    raise ConfigurationError(
        f"unsupported store URL {redact_url(url)}: accepted schemes are redis://, rediss:// and "
        "unix:// (Redis); leave the URL unset for the in-process memory store"
    )
