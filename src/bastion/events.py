"""Events that bastion's features publish, and the registry hooks subscribe to.

Every capability reports what it decided (a store went down, a request was rate limited, a cache
entry was served stale) as a small frozen event. Hooks (Prometheus, logs, the dashboard, your own)
subscribe by event type. The events live here, in the core, so that a consumer such as the metrics
hook can subscribe to a rate-limit event without importing the rate limiter.

Publishing is synchronous and must stay cheap: a hook that needs I/O should hand the event to a
queue. A hook that raises is logged and skipped; it never breaks the request that published.

Example::

    hooks = Hooks()
    unsubscribe = hooks.subscribe(StoreDown, lambda event: print(event.store, event.error))
    hooks.publish(StoreDown(store="redis", error="connection refused", retry_in_s=0.5))
    unsubscribe()
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Event",
    "Hook",
    "Hooks",
    "RateLimitStoreFailure",
    "RateLimited",
    "StoreDown",
    "StoreUp",
    "UnhandledError",
]

logger = logging.getLogger("bastion.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every event; subscribe to it to receive all of them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreDown(Event):
    """A store failed and its health gate opened: operations fail fast until ``retry_in_s``."""

    store: str
    """Name of the store (``"memory"``, ``"redis"``)."""
    error: str
    """The failure that opened the gate, as text (never contains credentials)."""
    retry_in_s: float
    """Seconds until the next operation is let through as a probe."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreUp(Event):
    """A store answered again after being down; its health gate closed."""

    store: str
    """Name of the store."""
    down_for_s: float
    """How long the store was treated as down."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnhandledError(Event):
    """The error boundary caught an exception the application did not handle."""

    request_id: str
    """The request's id, as echoed in ``X-Request-ID`` and the problem body."""
    method: str
    """HTTP method of the request."""
    route: str | None
    """Route template, or ``None`` when no route matched."""
    error_type: str
    """Qualified name of the exception class."""
    response_started: bool
    """True when the response had already started, so the connection was closed instead."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimited(Event):
    """A request was refused with 429 because a rate limit's quota was spent.

    The client's address is never part of the event: ``partition`` is a short digest of the
    client's key (principal or IP), enough to group refusals by offender without storing IPs.
    """

    policies: tuple[str, ...]
    """Names of the quotas that refused the request (as in ``RateLimit-Policy``)."""
    method: str
    """HTTP method of the request."""
    route: str | None
    """Route template, or ``None`` when no route matched."""
    principal: str | None
    """Who was limited, when authentication set a principal (an API key id, a user id)."""
    partition: str
    """16 hex digits of a BLAKE2b digest of the rate-limit key."""
    retry_after_s: float
    """Seconds until the request would be admitted."""
    cost: int
    """The request's cost in quota units."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitStoreFailure(Event):
    """A rate-limit decision could not reach its store; the outage policy decided instead."""

    store: str
    """Name of the store (``"redis"``)."""
    on_store_error: str
    """The policy applied: ``fail_open``, ``fail_closed`` or ``local_fallback``."""
    error: str
    """The store's error, as text (never contains credentials)."""


E = TypeVar("E", bound=Event)
Hook = Callable[[E], None]


class Hooks:
    """A registry of hooks by event type.

    A hook subscribed to a class receives its subclasses too; ``Event`` receives everything.
    The lookup per concrete event type is cached, so publishing an event nobody listens to costs
    one dict lookup.
    """

    __slots__ = ("_by_type", "_resolved")

    def __init__(self) -> None:
        self._by_type: dict[type[Event], list[Callable[[Event], None]]] = {}
        self._resolved: dict[type[Event], tuple[Callable[[Event], None], ...]] = {}

    def subscribe(self, event_type: type[E], hook: Callable[[E], None]) -> Callable[[], None]:
        """Call ``hook`` with every published event of ``event_type`` (or a subclass).

        Returns:
            A function that removes the subscription.
        """
        # Hooks are stored type-erased; publish only ever hands a hook events of its own type.
        erased: Callable[[Event], None] = hook  # type: ignore[assignment]
        self._by_type.setdefault(event_type, []).append(erased)
        self._resolved.clear()

        def unsubscribe() -> None:
            hooks = self._by_type.get(event_type, [])
            if erased in hooks:
                hooks.remove(erased)
                self._resolved.clear()

        return unsubscribe

    def wants(self, event_type: type[Event]) -> bool:
        """Whether anyone listens to ``event_type``; lets producers skip building an event."""
        return bool(self._hooks_for(event_type))

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every hook subscribed to its type or a base of it."""
        for hook in self._hooks_for(type(event)):
            try:
                hook(event)
            except Exception:  # a broken hook must never break the request that published
                logger.exception("event hook %r failed on %s", hook, type(event).__name__)

    def _hooks_for(self, event_type: type[Event]) -> tuple[Callable[[Event], None], ...]:
        try:
            return self._resolved[event_type]
        except KeyError:
            hooks = tuple(
                hook for base in event_type.__mro__ for hook in self._by_type.get(base, ())
            )
            self._resolved[event_type] = hooks
            return hooks
