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
    "AuthStoreFailure",
    "AuthenticationFailed",
    "AuthenticationSucceeded",
    "BannedRequest",
    "BodyLimitExceeded",
    "CacheHit",
    "CacheMiss",
    "CachePurged",
    "CacheStaleServed",
    "CacheStoreFailure",
    "CacheStored",
    "ClientBanned",
    "Event",
    "FunctionCacheHit",
    "FunctionCacheMiss",
    "Hook",
    "Hooks",
    "NetworkDenied",
    "PathRejected",
    "RateLimitStoreFailure",
    "RateLimited",
    "RequestCoalesced",
    "RequestRejected",
    "RequestShed",
    "RequestTimedOut",
    "StoreDown",
    "StoreUp",
    "UnhandledError",
    "event_name",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationFailed(Event):
    """Credentials were refused (401/403) or could not be checked (503).

    Never carries the credential: an API key appears only as its public id, a token not at all.
    """

    reason: str
    """Why: ``malformed``, ``unknown_key``, ``wrong_secret``, ``revoked``, ``expired``,
    ``invalid_signature``, ``wrong_audience``, ``wrong_issuer``, ``unknown_kid``,
    ``algorithm_not_allowed``, ``missing_claim``, ``not_yet_valid``, ``ambiguous``,
    ``missing``, ``insufficient_scope``, ``store_unavailable``, ``jwks_unavailable``, ..."""
    status: int
    """The status answered: 401, 403 or 503."""
    credential: str | None
    """``"api_key"``, ``"jwt"``, or ``None`` when none was sent."""
    key_id: str | None
    """The API key's public id when one was presented (never its secret)."""
    method: str
    """HTTP method of the request."""
    route: str | None
    """Route template, or ``None`` when no route matched."""
    client: str | None
    """The client address (as in the request context)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationSucceeded(Event):
    """A request was authenticated; ``principal`` is now in its request context."""

    principal: str
    """The principal id (``key:<id>``, ``user:<sub>``)."""
    credential: str
    """``"api_key"`` or ``"jwt"``."""
    method: str
    """HTTP method of the request."""
    route: str | None
    """Route template, or ``None`` when no route matched."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthStoreFailure(Event):
    """An API key could not be looked up in its store; the outage policy decided instead."""

    store: str
    """Name of the store (``"redis"``)."""
    on_store_error: str
    """The policy applied: ``fail_closed`` or ``serve_stale``."""
    served_stale: bool
    """Whether a recently verified copy of the key's record answered instead of the store."""
    error: str
    """The store's error, as text (never contains credentials)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CachePurged(Event):
    """Cache entries were invalidated: by tag (``purge``) or by key (``delete``, ``invalidate``)."""

    backend: str
    """The cache backend (``"memory"``, ``"redis"``)."""
    tags: tuple[str, ...]
    """The tags purged; empty when one key was deleted."""
    keys: int
    """How many keys were deleted by key (0 for a purge by tag)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStoreFailure(Event):
    """A cache operation could not reach its store; the caller went on uncached (fail open)."""

    backend: str
    """The cache backend (``"redis"``)."""
    operation: str
    """What failed: ``get``, ``set``, ``lock``, ``purge``, ``delete``, ``publish``."""
    error: str
    """The store's error, as text (never contains credentials)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheHit(Event):
    """A response was served fresh from the response cache, without running the handler."""

    route: str | None
    """Route template, or ``None`` when a rule matched the raw path."""
    method: str
    """``GET`` or ``HEAD``."""
    age_s: float
    """Seconds since the response was produced (its ``Age``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheMiss(Event):
    """The response cache forwarded a request to the handler (and maybe stored the response)."""

    route: str | None
    """Route template, or ``None`` when a rule matched the raw path."""
    method: str
    """``GET`` or ``HEAD``."""
    reason: str
    """Why: ``miss`` (nothing stored), ``stale`` (stored but expired), ``request`` (the
    client's ``Cache-Control`` asked for a fresh response)."""
    stored: bool
    """Whether the new response was stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStored(Event):
    """The response cache stored a response."""

    route: str | None
    """Route template, or ``None`` when a rule matched the raw path."""
    bytes: int
    """Size of the stored body."""
    ttl_s: float
    """Its freshness lifetime."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStaleServed(Event):
    """The response cache served an expired response (RFC 5861)."""

    route: str | None
    """Route template, or ``None`` when a rule matched the raw path."""
    method: str
    """``GET`` or ``HEAD``."""
    reason: str
    """``stale-while-revalidate`` (a refresh runs behind it) or ``stale-if-error`` (the
    handler failed, answered 5xx or ran past the deadline)."""
    stale_s: float
    """Seconds since the response expired."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCoalesced(Event):
    """A request waited for a concurrent identical one and got its response (single-flight)."""

    route: str | None
    """Route template, or ``None`` when a rule matched the raw path."""
    method: str
    """``GET`` or ``HEAD``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCacheHit(Event):
    """A ``@cached`` function returned a stored value without running."""

    function: str
    """The function's qualified name (``module.qualname``) or the ``name=`` it was given."""
    level: str
    """Where the value came from: ``"local"`` (the in-process L1) or the backend's name."""
    duration_s: float
    """Seconds the call took."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCacheMiss(Event):
    """A ``@cached`` function ran (or shared the run of a concurrent call) and stored its value."""

    function: str
    """The function's qualified name or the ``name=`` it was given."""
    shared: bool
    """True when the value came from a concurrent call's run (single-flight), not this call's."""
    duration_s: float
    """Seconds the call took, the function's run included."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientBanned(Event):
    """The abuse guard banned a client after a burst of auth failures or client errors.

    Unlike ``RateLimited``, this carries the client's address: a ban is rare, and the operator
    needs the address to investigate it or to deny its network for good.
    """

    client: str
    """The ban key: the client's IP address, or its IPv6 network (``2001:db8:1:2::/64``)."""
    trigger: str
    """What crossed its threshold: ``auth_failures`` or ``client_errors``."""
    offences: int
    """How many times this client has been banned within the memory period, this ban included."""
    ban_s: float
    """How long this ban lasts, in seconds."""
    method: str
    """HTTP method of the request that triggered the ban."""
    route: str | None
    """Route template of that request, or ``None`` when no route matched."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRejected(Event):
    """The abuse guard refused a request before the application saw it.

    Subscribe to this class to receive every refusal; each reason is a subclass, so the metrics
    bridge counts them apart (``bastion_events_total{event="path_rejected"}``).
    """

    method: str
    """HTTP method of the request (``"WS"`` for a WebSocket handshake)."""
    route: str | None
    """Route template, or ``None`` when no route matched."""
    status: int
    """The status answered: 400, 403 or 413."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BannedRequest(RequestRejected):
    """A request from a banned client was refused with 403 and ``Retry-After``."""

    client: str
    """The ban key (IP address or IPv6 network)."""
    retry_after_s: float
    """Seconds until the ban ends."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkDenied(RequestRejected):
    """A request from a network on the deny list was refused with 403."""

    client: str
    """The client's IP address."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRejected(RequestRejected):
    """A request path was refused with 400: NUL byte, traversal segment or invalid UTF-8."""

    problem: str
    """``nul``, ``traversal`` or ``invalid_utf8``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyLimitExceeded(RequestRejected):
    """A request body was refused with 413 (or cut off, if the response had started)."""

    limit_bytes: int
    """The limit that applied to the request."""
    declared: bool
    """True when ``Content-Length`` announced too much and nothing was read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestShed(Event):
    """Load shedding refused a request with 503, or its client left while it was queued."""

    reason: str
    """Why: ``queue_full`` (no room in the queue), ``evicted`` (pushed out of a full queue by a
    request of higher priority), ``queue_timeout`` (waited too long) or ``client_disconnected``
    (the client went away while queued; nothing was answered)."""
    method: str
    """HTTP method of the request."""
    route: str | None
    """Route template, or ``None`` when no route matched."""
    priority: int
    """The request's priority."""
    limit: int
    """The concurrency limit at the time."""
    waited_s: float
    """Seconds the request spent in the queue (0 when it was refused on arrival)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTimedOut(Event):
    """A request ran past its deadline: its handler was cancelled."""

    method: str
    """HTTP method of the request."""
    route: str | None
    """Route template, or ``None`` when no route matched."""
    timeout_s: float
    """The timeout that applied to the request."""
    response_started: bool
    """False: answered 504. True: the response had started, so it was cut off and the
    connection closed (the status already sent is kept)."""


E = TypeVar("E", bound=Event)
Hook = Callable[[E], None]


def event_name(kind: type[Event]) -> str:
    """The snake-case name of an event class: ``RateLimited`` -> ``rate_limited``.

    The ``event`` label of ``bastion_events_total``, and the span event's name (prefixed with
    ``bastion.``) when tracing records decisions. Computed once per class.
    """
    name = _names.get(kind)
    if name is None:
        name = _names[kind] = "".join(
            f"_{char.lower()}" if char.isupper() and index else char.lower()
            for index, char in enumerate(kind.__name__)
        )
    return name


_names: dict[type[Event], str] = {}


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
