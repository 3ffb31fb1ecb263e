"""``CacheMiddleware``: an RFC 9111 shared cache for GET/HEAD, in front of the framework's router.

A request to a route with a cache policy is answered from the cache when it can be: one lookup in
the backend (one round trip on Redis) and two ``send`` calls, before the framework routes,
validates or serializes anything. Otherwise the handler runs once per key (single-flight, across
workers on Redis), its response is captured, stored when RFC 9111 allows it, and sent.

What decides, in order:

1. The route's policy (``@cache(...)`` on the endpoint, else the first matching rule). None: the
   request goes straight to the app.
2. The request: ``Range`` goes straight to the app; ``Cache-Control: no-store`` bypasses the
   cache; ``no-cache``, ``max-age`` and ``min-fresh`` (or ``Pragma: no-cache``) make a stored
   response unusable, so the handler runs and the result replaces it; ``only-if-cached`` gets 504
   on a miss.
3. The key: route, path, normalized query, the values of the request headers the responses vary
   on, and, unless the route is ``public``, the caller's credentials (principal,
   ``Authorization``, cookies), so a response to one caller is never served to another.
4. The stored response: fresh → served (304 when ``If-None-Match`` matches); stale within
   ``stale-while-revalidate`` → served while one refresh runs behind it; stale within
   ``stale-if-error`` → the handler runs and the stale response stands in if it fails.
5. The new response is stored if its status is cacheable, it carries no ``Set-Cookie``, its
   ``Cache-Control`` allows a shared cache (``no-store``, ``no-cache``, and ``private`` for a
   request without credentials, forbid it), its ``Vary`` is not ``*``, and its body fits
   ``max_entry_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, Protocol

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._routes import RouteResolver, ScopeRoutes, route_endpoints
from bastion.cache._entry import (
    MARKER_MAGIC,
    Entry,
    decode_entry,
    decode_marker,
    encode_entry,
    encode_marker,
)
from bastion.cache._etag import content_etag, not_modified_headers
from bastion.cache._flight import SingleFlight
from bastion.cache._http import (
    CACHEABLE_STATUSES,
    CacheControl,
    cache_status,
    etag_matches,
    http_date_seconds,
    normalize_query,
    parse_cache_control,
    parse_vary,
)
from bastion.cache._policy import (
    CachePolicy,
    CacheRule,
    TagTemplate,
    declarations,
    invalidated_by,
    path_params,
    policy_of,
)
from bastion.context import SCOPE_KEY, RequestContext
from bastion.events import (
    CacheHit,
    CacheMiss,
    CacheStaleServed,
    CacheStored,
    CacheStoreFailure,
    RequestCoalesced,
)
from bastion.exceptions import ConfigurationError, StoreDataError, StoreError
from bastion.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bastion.cache._backend import CacheBackend
    from bastion.events import Hooks
    from bastion.settings import CacheSettings

__all__ = ["CacheMiddleware", "EncodingNegotiator", "cache_layer", "cache_options"]

logger = logging.getLogger("bastion.cache")

EncodingNegotiator = Callable[[bytes | None], str | None]
"""Maps a request's ``Accept-Encoding`` to the content coding its response will get (``None``:
identity). ``Bastion`` passes the compression layer's own negotiation, so responses that vary on
``Accept-Encoding`` are keyed by the coding chosen, not by the raw header: ``gzip, br`` and
``br, gzip`` share the ``br`` entry."""


class Spawn(Protocol):
    """Starts background work: the task, or ``None`` when it declined (and closed ``work``)."""

    def __call__(
        self, work: Coroutine[Any, Any, None], *, name: str
    ) -> asyncio.Task[None] | None: ...


_MEMO_LIMIT = 4096
_DECODED_LIMIT = 1024
_DECODED_BYTES = 32 * 1024 * 1024  # decoded entries kept for reuse, at most (bodies are copies)
_MISSING = b""

# Request headers read on every cacheable request (besides the ones responses vary on).
_AUTHORIZATION = b"authorization"
_COOKIE = b"cookie"
_CACHE_CONTROL = b"cache-control"
_PRAGMA = b"pragma"
_IF_NONE_MATCH = b"if-none-match"
_RANGE = b"range"
_ACCEPT_ENCODING = b"accept-encoding"
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since", b"if-match", b"if-range"})

# Response headers never stored: hop-by-hop (RFC 9110 §7.6.1), per-response, or recomputed.
_NOT_STORED = frozenset(
    {
        b"age",
        b"cache-status",
        b"connection",
        b"content-length",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_HIT = b"bastion; hit"
_MISS = b"bastion; fwd=miss"
_MISS_STORED = b"bastion; fwd=miss; stored"
_COLLAPSED = b"bastion; fwd=miss; collapsed"
_REQUEST = b"bastion; fwd=request"
_REQUEST_STORED = b"bastion; fwd=request; stored"
_STALE_STORED = b"bastion; fwd=stale; stored"
_STALE = b"bastion; fwd=stale"
_METHOD = b"bastion; fwd=method"
_UNAVAILABLE = b"bastion; fwd=miss; detail=store-unavailable"
_FORWARDED = {"miss": (_MISS, _MISS_STORED), "request": (_REQUEST, _REQUEST_STORED)}
_FORWARDED["stale"] = (_STALE, _STALE_STORED)

_NOT_SERVED = -1.0  # a captured response that is only shared in the process, never stored


class _Plan:
    """What applies to one route: the compiled policy and the request headers the key reads."""

    __slots__ = (
        "_base",
        "coalesce",
        "etag",
        "head",
        "limit",
        "params",
        "policy",
        "public",
        "route",
        "route_key",
        "store",
        "tags",
        "ttl_s",
        "vary",
        "wanted",
    )

    def __init__(
        self,
        policy: CachePolicy,
        route: str | None,
        *,
        default_ttl_s: float,
        max_entry_bytes: int,
        private_headers: frozenset[bytes],
        negotiated: bool,
    ) -> None:
        self.policy = policy
        self.route = route
        self.route_key = (route or "").encode("utf-8")
        self.store = policy.store
        self.etag = policy.etag
        self.coalesce = policy.coalesce
        self.public = policy.public
        self.head = True
        self.ttl_s = policy.ttl_s if policy.ttl_s is not None else default_ttl_s
        self.limit = (
            policy.max_entry_bytes if policy.max_entry_bytes is not None else max_entry_bytes
        )
        self.tags = tuple(TagTemplate(tag) for tag in policy.tags)
        templated = route is not None and any("{" in tag for tag in policy.tags)
        self.params = path_params(route) if templated and route is not None else None
        vary = {name.strip().lower().encode("latin-1") for name in policy.vary}
        if negotiated:
            vary.add(_ACCEPT_ENCODING)
        self._base = frozenset(
            {_AUTHORIZATION, _COOKIE, _CACHE_CONTROL, _PRAGMA, _IF_NONE_MATCH, _RANGE}
            | private_headers
        )
        self.vary: tuple[bytes, ...] = tuple(sorted(vary))
        self.wanted: frozenset[bytes] = self._base | vary

    def learn(self, names: Iterable[bytes]) -> bool:
        """Add header names the route's responses vary on; return whether any was new."""
        merged = tuple(sorted(set(self.vary) | set(names)))
        if merged == self.vary:
            return False
        self.vary = merged
        self.wanted = self._base | set(merged)
        return True

    def render_tags(self, path: str) -> tuple[str, ...]:
        """The tags of a response to ``path``, placeholders filled from its path parameters."""
        if self.params is None:
            return tuple(template.text for template in self.tags)
        params = self.params(path)
        return tuple(tag for t in self.tags if (tag := t.render(params)) is not None)


class _Call:
    """One cacheable request: what was read from it once, passed between the steps."""

    __slots__ = (
        "context",
        "found",
        "key",
        "method",
        "partition",
        "plan",
        "receive",
        "scope",
        "send",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        plan: _Plan,
        method: str,
        context: RequestContext | None,
        found: dict[bytes, bytes],
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.plan = plan
        self.method = method
        self.context = context
        self.found = found
        self.key = ""
        self.partition = _MISSING


class _Capture:
    """The ``send`` of a forwarded request: holds the response until it is complete.

    A response that grows past ``limit`` (or is an event stream) is flushed to ``send`` as it is
    and passed through from then on: it will not be stored. With ``hold_errors``, a 5xx response
    is held whatever its size and never sent: the caller serves a stale response instead.
    """

    __slots__ = (
        "chunks",
        "complete",
        "flushed",
        "hold_errors",
        "limit",
        "send",
        "size",
        "start",
        "status_value",
    )

    def __init__(self, send: Send, limit: int, status_value: bytes, hold_errors: bool) -> None:
        self.send = send
        self.limit = limit
        self.status_value = status_value
        self.hold_errors = hold_errors
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.flushed = False

    @property
    def failed(self) -> bool:
        """The app answered 5xx and the caller holds a stale response to send instead."""
        return self.hold_errors and self.start is not None and self.start["status"] >= 500

    async def __call__(self, message: Message) -> None:
        if self.flushed:
            await self.send(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            if not self.failed and _streams(message, self.limit):
                await self._flush()
            return
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")
            if body:
                self.chunks.append(body)
                self.size += len(body)
            if not message.get("more_body", False):
                self.complete = True
            elif self.size > self.limit and not self.failed:
                await self._flush()
            return
        if not self.failed:  # trailers, pathsend: not ours to hold
            await self._flush()
            await self.send(message)

    async def _flush(self) -> None:
        """Send what is held and pass everything after it through."""
        self.flushed = True
        start = self.start
        if start is None:
            return
        headers = [*start.get("headers", ()), (b"cache-status", self.status_value)]
        await self.send({**start, "headers": headers})
        if self.chunks or self.complete:
            body = b"".join(self.chunks)
            self.chunks.clear()
            more = not self.complete
            await self.send({"type": "http.response.body", "body": body, "more_body": more})


def _streams(start: Message, limit: int) -> bool:
    """Whether a response is sent through at once: an event stream, or declared too large."""
    for key, value in start.get("headers", ()):
        lower = key.lower()
        if lower == b"content-type" and value[:17].lower() == b"text/event-stream":
            return True
        if lower == b"content-length" and value.isdigit() and int(value) > limit:
            return True
    return False


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class CacheMiddleware:
    """Caches GET/HEAD responses per route policy, as a shared cache (RFC 9111) would.

    ::

        from bastion.cache import CacheMiddleware, cache

        app.add_middleware(CacheMiddleware)

        @app.get("/albums")
        @cache(ttl=60, stale_while_revalidate=30, tags=["albums"])
        async def albums() -> list[Album]: ...

    Args:
        app: the ASGI app to wrap.
        backend: where entries live (``MemoryCacheBackend``, ``RedisCacheBackend``); a memory
            backend of 64 MiB by default.
        rules: policies by route pattern (``CacheRule``, ``"PATTERN=TTL"``, or a mapping of
            ``cache()`` options plus ``path``); a policy on the endpoint wins.
        default_ttl_s: freshness lifetime of a response whose policy and ``Cache-Control`` set
            none.
        max_entry_bytes: the largest body stored (a policy may set its own); larger responses
            stream through.
        honor_request_cache_control: obey the client's ``no-cache``/``no-store``/``max-age``
            (RFC 9111). ``False`` ignores them, as CDNs usually do: any client can otherwise
            make the handler run on every request.
        private_headers: request headers that identify the caller besides ``Authorization`` and
            ``Cookie`` (e.g. ``X-API-Key``): requests with any of them get entries of their own
            unless the route is ``public``.
        negotiate_encoding: the content coding the compression layer below will choose for an
            ``Accept-Encoding`` (see ``EncodingNegotiator``). With it, responses are keyed by
            coding from the first lookup, and each compressed variant is stored once.
        lock_ttl_s: how long a miss's cross-worker lock lives (a dead leader's delay at worst).
        wait_s: the longest a request waits for another worker's miss before running itself.
        hooks: where ``CacheHit``, ``CacheMiss``, ``CacheStored``, ``CacheStaleServed``,
            ``RequestCoalesced`` and ``CacheStoreFailure`` are published.
        clock: time source (wall time for ``Age``).
        route_resolver: finds route templates when no ``RequestContext`` is present.
        spawn: starts the background refresh of a stale-while-revalidate hit; it may return
            ``None`` to skip it. ``Bastion`` passes its shutdown coordinator's, so that a drain
            waits for refreshes; by default the middleware keeps its own tasks.

    Raises:
        ConfigurationError: an option or rule is invalid.
    """

    __slots__ = (
        "_credentials",
        "_decoded",
        "_decoded_bytes",
        "_flight",
        "_honor_request",
        "_hooks",
        "_index",
        "_invalidations",
        "_keys",
        "_local",
        "_negotiate",
        "_path_plans",
        "_plans",
        "_private",
        "_public_dependencies",
        "_refreshing",
        "_routes",
        "_rules",
        "_spawn",
        "_tasks",
        "app",
        "backend",
        "clock",
        "default_ttl_s",
        "max_entry_bytes",
    )

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        backend: CacheBackend | None = None,
        rules: Iterable[CacheRule | str | Mapping[str, Any]] = (),
        default_ttl_s: float = 60.0,
        max_entry_bytes: int = 1024 * 1024,
        honor_request_cache_control: bool = True,
        private_headers: Iterable[str] = (),
        negotiate_encoding: EncodingNegotiator | None = None,
        lock_ttl_s: float = 10.0,
        wait_s: float = 10.0,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
        route_resolver: RouteResolver | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        if not 0 < default_ttl_s < float("inf"):
            raise ConfigurationError(f"default_ttl_s must be positive, not {default_ttl_s!r}")
        if isinstance(max_entry_bytes, bool) or max_entry_bytes < 0:
            raise ConfigurationError(f"max_entry_bytes must be >= 0, not {max_entry_bytes!r}")
        if backend is None:
            from bastion.cache._memory import MemoryCacheBackend

            backend = MemoryCacheBackend(hooks=hooks, clock=clock)
        self.app = app
        self.backend = backend
        self.clock = clock
        self.default_ttl_s = float(default_ttl_s)
        self.max_entry_bytes = max_entry_bytes
        self._rules = tuple(CacheRule.from_value(rule) for rule in rules)
        self._honor_request = honor_request_cache_control
        self._private = frozenset(
            name.strip().lower().encode("latin-1") for name in private_headers
        )
        self._credentials = (_AUTHORIZATION, _COOKIE, *sorted(self._private))
        self._keys: dict[tuple[Any, ...], str] = {}
        self._negotiate = negotiate_encoding
        self._hooks = hooks
        self._routes = ScopeRoutes(route_resolver)
        self._flight = SingleFlight(
            backend, lock_ttl_s=lock_ttl_s, wait_s=wait_s, clock=clock, hooks=hooks
        )
        self._local = SingleFlight(None, clock=clock)
        self._plans: dict[str | None, _Plan | None] = {}
        self._path_plans: dict[str, _Plan | None] = {}
        self._invalidations: dict[tuple[str, str | None], tuple[_Plan, ...] | None] = {}
        self._index: dict[str, list[Any]] | None = None
        # Route template -> the dependencies of its GET route (FastAPI), for the warning below.
        self._public_dependencies: dict[str, tuple[str, ...]] = {}
        self._decoded: dict[str, tuple[bytes, Entry]] = {}
        self._decoded_bytes = 0
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = spawn if spawn is not None else self._spawn_here

    # -- public API ---------------------------------------------------------------------------

    async def purge(self, *tags: str) -> None:
        """Invalidate every stored response carrying one of ``tags``, in every worker.

        Raises:
            StoreError: the backend could not be reached (nothing was purged).
        """
        await self.backend.purge(*tags)

    # -- the request ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve from the cache, or forward and maybe store; purge on configured writes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        context: RequestContext | None = scope.get(SCOPE_KEY)
        route = context.route if context is not None else self._routes.resolve(scope, method)
        if method == "GET" or method == "HEAD":
            if route is None:
                plan = self._path_plan(scope)
            else:
                try:
                    plan = self._plans[route]
                except KeyError:
                    plan = self._plan(scope, route)
            if plan is None:
                await self.app(scope, receive, send)
                return
            wanted = plan.wanted
            found: dict[bytes, bytes] = {}
            for name, value in scope["headers"]:
                if name in wanted:
                    previous = found.get(name)
                    found[name] = value if previous is None else previous + b"," + value
            if _RANGE in found or (method == "HEAD" and not plan.head):
                await self.app(scope, receive, send)
                return
            call = _Call(scope, receive, send, plan, method, context, found)
            if plan.store:
                await self._cached(call)
            else:
                await self._uncached(call)
            return
        plans = self._invalidating_plans(scope, method, route)
        if plans is None:
            await self.app(scope, receive, send)
            return
        await self._invalidate(scope, receive, send, plans, method)

    async def _cached(self, call: _Call) -> None:
        """A GET/HEAD on a route whose responses are stored."""
        plan = call.plan
        found = call.found
        forced = False
        control: CacheControl | None = None
        if self._honor_request:
            raw = found.get(_CACHE_CONTROL)
            if raw is not None:
                control = parse_cache_control(raw)
                if control.no_store:
                    if call.method == "HEAD":
                        await self._pass_head(call)
                    else:
                        await self._forward(call, None, "request", store=False)
                    return
                forced = control.no_cache or control.max_age == 0
            elif b"no-cache" in found.get(_PRAGMA, b""):
                forced = True  # HTTP/1.0 clients (RFC 9111 §5.4)
        call.partition = self._partition(call)
        call.key = self._key(call)
        try:
            entry = await self._lookup(call)
        except StoreError as exc:
            self._store_failed("get", exc)
            await self._forward(call, None, "miss", store=False, status_value=_UNAVAILABLE)
            return
        now = self.clock.time()
        if entry is not None:
            age = now - entry.stored_at
            if age < 0:
                age = 0.0
            remaining = entry.fresh_s - age
            if control is not None and not forced:
                forced = (control.max_age is not None and age > control.max_age) or (
                    control.min_fresh is not None and remaining < control.min_fresh
                )
            if not forced:
                if remaining > 0:
                    await self._serve(call, entry, age, _HIT)
                    if self._hooks is not None:
                        self._hooks.publish(
                            CacheHit(route=plan.route, method=call.method, age_s=age)
                        )
                    return
                if -remaining < entry.stale_while_revalidate_s:
                    await self._serve_stale_while_revalidate(call, entry, age, remaining)
                    return
            if control is not None and control.only_if_cached:
                await self._gateway_timeout(call)  # stored, but not usable (RFC 9111 §5.2.1.7)
                return
            sie_s = entry.stale_if_error_s
            fallback = entry if sie_s > 0 and -remaining < sie_s else None
            if call.method == "HEAD":
                await self._pass_head(call)
                return
            reason = "request" if forced else "stale"
            await self._shared(call, fallback, reason, newer_than=entry.stored_at)
            return
        if control is not None and control.only_if_cached:
            await self._gateway_timeout(call)
            return
        if call.method == "HEAD":
            await self._pass_head(call)  # a HEAD response has no body to store
            return
        await self._shared(call, None, "request" if forced else "miss", newer_than=None)

    async def _uncached(self, call: _Call) -> None:
        """A GET/HEAD on a route that only coalesces or adds ETags."""
        plan = call.plan
        if call.method == "HEAD":
            await self._pass_head(call)  # its body is empty: nothing to hash or share
            return
        if not plan.coalesce:
            await self._forward(call, None, "miss", store=False)
            return
        call.partition = self._partition(call)
        call.key = self._key(call)
        result = await self._local.run(
            call.key, lambda: self._forward(call, None, "miss", store=False), load=_nothing
        )
        if result.led:
            return
        if result.value is None:
            await self._forward(call, None, "miss", store=False)
            return
        await self._serve(call, result.value, 0.0, _COLLAPSED, age_header=False)
        self._coalesced(call)

    async def _shared(
        self, call: _Call, fallback: Entry | None, reason: str, *, newer_than: float | None
    ) -> None:
        """Forward once per key (single-flight), or serve what a concurrent request stored."""
        if not call.plan.coalesce:
            await self._forward(call, fallback, reason)
            return

        async def load() -> Entry | None:
            entry = await self._lookup(call)  # follows a Vary marker the leader may have left
            if entry is None or (newer_than is not None and entry.stored_at <= newer_than):
                return None
            return entry

        result = await self._flight.run(
            call.key, lambda: self._forward(call, fallback, reason), load=load
        )
        if result.led:
            return
        entry = result.value
        if entry is None:
            await self._forward(call, fallback, reason)
            return
        # Stored by a concurrent request here or in another worker: a response from the cache.
        await self._serve(call, entry, max(self.clock.time() - entry.stored_at, 0.0), _COLLAPSED)
        self._coalesced(call)

    # -- keys and lookups -----------------------------------------------------------------------

    def _partition(self, call: _Call) -> bytes:
        """Who the entries belong to: empty (shared by all) or a digest of the credentials."""
        if call.plan.public:
            return _MISSING
        found = call.found
        context = call.context
        principal = context.principal if context is not None else None
        if principal is None:
            for name in self._credentials:
                if name in found:
                    break
            else:
                return _MISSING  # anonymous: the shared entries (the common case, checked first)
        credentials = [
            name + b"=" + value
            for name in self._credentials
            if (value := found.get(name)) is not None
        ]
        material = b"\0".join([(principal or "").encode("utf-8"), *credentials])
        return blake2b(material, digest_size=16, person=b"bastion-cache").digest()

    def _key(self, call: _Call) -> str:
        """The backend key: route, path, normalized query, credentials, varying headers.

        Memoized on the raw inputs (bounded): a hit on a popular URL skips the normalization
        and the hash.
        """
        plan = call.plan
        scope = call.scope
        found = call.found
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        vary = plan.vary
        raw = (plan.route_key, path, query, call.partition, *map(found.get, vary))
        memo = self._keys
        known = memo.get(raw)
        if known is not None:
            return known
        parts = [plan.route_key, path.encode("utf-8", "surrogateescape")]
        parts.append(normalize_query(query))
        parts.append(call.partition)
        negotiate = self._negotiate
        for name in vary:
            value = found.get(name)
            if name == _ACCEPT_ENCODING and negotiate is not None:
                value = (negotiate(value) or "identity").encode("ascii")
            elif value is not None:
                value = b" ".join(value.split())
            parts.append(name + b"=" + (value if value is not None else b"\1"))
        key = "h:" + blake2b(b"\0".join(parts), digest_size=16).hexdigest()
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()  # paths, queries and credentials are unbounded: forget at once
        memo[raw] = key
        return key

    async def _lookup(self, call: _Call) -> Entry | None:
        """The stored entry for the call's key, following a Vary marker once."""
        key = call.key
        raw = await self.backend.get(key)
        if raw is None:
            return None
        if not raw.startswith(MARKER_MAGIC):
            memo = self._decoded.get(key)
            if memo is not None and (memo[0] is raw or memo[0] == raw):
                return memo[1]  # the common hit: decoded before, same bytes
            return self._decode(key, raw)
        names = decode_marker(raw)
        if names is not None and call.plan.learn(names):
            self._rescan(call)
            call.key = self._key(call)
            raw = await self.backend.get(call.key)
            if raw is not None and decode_marker(raw) is None:
                return self._decode(call.key, raw)
        return None

    def _decode(self, key: str, raw: bytes) -> Entry | None:
        """Decode ``raw`` and keep it as the key's entry while the backend returns those bytes."""
        try:
            entry = decode_entry(raw)
        except StoreDataError:
            logger.warning("cache entry %s is not a response entry; ignoring it", key)
            return None
        size = len(raw)
        replaced = self._decoded.pop(key, None)
        if replaced is not None:
            self._decoded_bytes -= len(replaced[0])
        if len(self._decoded) >= _DECODED_LIMIT or self._decoded_bytes + size > _DECODED_BYTES:
            self._decoded.clear()  # bounded by count and bytes; hot keys come back at once
            self._decoded_bytes = 0
        self._decoded[key] = (raw, entry)
        self._decoded_bytes += size
        return entry

    def _rescan(self, call: _Call) -> None:
        """Read the request headers again after the plan learned new Vary names."""
        wanted = call.plan.wanted
        found: dict[bytes, bytes] = {}
        for name, value in call.scope["headers"]:
            if name in wanted:
                previous = found.get(name)
                found[name] = value if previous is None else previous + b"," + value
        call.found = found

    # -- responding -----------------------------------------------------------------------------

    async def _serve(
        self, call: _Call, entry: Entry, age: float, status_value: bytes, *, age_header: bool = True
    ) -> None:
        """Send a stored (or shared) entry; 304 when the request's validator matches."""
        if status_value is _HIT:
            headers = entry.hit_headers
        else:
            headers = [*entry.headers, (b"cache-status", status_value)]
        headers = [*headers, (b"age", b"%d" % age)] if age_header else list(headers)
        status = entry.status
        body = entry.body
        if_none_match = call.found.get(_IF_NONE_MATCH)
        etag = entry.etag
        if (
            if_none_match is not None
            and etag is not None
            and status == 200
            and etag_matches(if_none_match, etag)
        ):
            status = 304
            headers = not_modified_headers(headers)
            body = _MISSING
        send = call.send
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": _MISSING if call.method == "HEAD" else body}
        )

    async def _serve_stale_while_revalidate(
        self, call: _Call, entry: Entry, age: float, remaining: float
    ) -> None:
        value = cache_status("hit", f"ttl={int(remaining)}", "detail=stale-while-revalidate")
        await self._serve(call, entry, age, value)
        self._stale_served(call, "stale-while-revalidate", -remaining)
        key = call.key
        if key in self._refreshing or call.method == "HEAD":
            return
        if self._spawn(self._refresh(call, entry), name="bastion-cache-refresh") is not None:
            self._refreshing.add(key)

    def _spawn_here(
        self, work: Coroutine[Any, Any, None], *, name: str
    ) -> asyncio.Task[None] | None:
        """Background work of a middleware used alone (``Bastion`` passes its shutdown
        coordinator's ``spawn``, so that a drain waits for refreshes)."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _refresh(self, call: _Call, stale: Entry) -> None:
        """Run the handler behind a stale response and store the result (one per key)."""
        background = _Call(
            call.scope, _no_body, _discard, call.plan, "GET", call.context, call.found
        )
        background.key = call.key
        background.partition = call.partition
        try:
            await self._shared(background, None, "stale", newer_than=stale.stored_at)
        except Exception:  # the stale response was served; the next request tries again
            logger.exception("refreshing a stale cache entry for %s failed", call.plan.route)
        finally:
            self._refreshing.discard(call.key)

    async def _pass_head(self, call: _Call) -> None:
        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"cache-status", _METHOD)]
                message = {**message, "headers": headers}
            await call.send(message)

        await self.app(call.scope, call.receive, send_with_status)

    async def _gateway_timeout(self, call: _Call) -> None:
        """``only-if-cached`` and nothing stored: 504 (RFC 9111 §5.2.1.7)."""
        from bastion.problem import send_problem

        await send_problem(
            call.scope,
            call.send,
            504,
            detail="The response is not in the cache and the request said only-if-cached.",
            headers=[(b"cache-status", _MISS)],
        )

    async def _forward(
        self,
        call: _Call,
        fallback: Entry | None,
        reason: str,
        *,
        store: bool = True,
        status_value: bytes | None = None,
    ) -> Entry | None:
        """Run the app, capture its response, respond, and store it when allowed.

        Returns the entry to share with requests waiting for this one (stored, or for
        coalescing only, captured), or ``None`` when there is nothing to share.
        """
        plan = call.plan
        store = store and plan.store
        not_stored, stored = _FORWARDED[reason]
        capture = _Capture(
            call.send, plan.limit, status_value or not_stored, hold_errors=fallback is not None
        )
        scope = call.scope
        if store or plan.etag:
            # The cache answers conditional requests itself, from the full response.
            headers = [(k, v) for k, v in scope["headers"] if k not in _CONDITIONAL]
            scope = {**scope, "headers": headers}
        snapshot = None
        tags: tuple[str, ...] = ()
        if store:
            tags = plan.render_tags(scope["path"])
            if tags:
                try:
                    snapshot = await self.backend.tag_snapshot(tags)
                except StoreError as exc:
                    self._store_failed("get", exc)
                    store = False
        try:
            timeout = self._remaining(call) if fallback is not None else None
            if timeout is not None:
                async with asyncio.timeout(timeout):
                    await self.app(scope, call.receive, capture)
            else:
                await self.app(scope, call.receive, capture)
        except Exception as exc:
            if fallback is None or capture.flushed:
                raise
            # The error boundary never sees this one: say what the stale response covered.
            logger.warning(
                "%s on %s failed (%s: %s); served the stale response (stale-if-error)",
                call.method,
                plan.route or scope["path"],
                type(exc).__name__,
                exc,
            )
            await self._serve_stale_if_error(call, fallback, None)
            return None
        start = capture.start
        if capture.flushed or start is None or not capture.complete:
            return None
        status: int = start["status"]
        if capture.failed and fallback is not None:
            await self._serve_stale_if_error(call, fallback, status)
            return None
        body = b"".join(capture.chunks) if len(capture.chunks) != 1 else capture.chunks[0]
        now = self.clock.time()
        headers = [
            (k.lower(), v) for k, v in start.get("headers", ()) if k.lower() not in _NOT_STORED
        ]
        if (
            plan.etag
            and status == 200
            and call.method == "GET"
            and not any(key == b"etag" for key, _ in headers)
        ):
            headers.append((b"etag", content_etag(body)))
        if status != 204:  # RFC 9110 §8.6: never on a 204
            headers.append((b"content-length", b"%d" % len(body)))
        entry: Entry | None = None
        vary: tuple[bytes, ...] | None = ()
        if store:
            entry, vary = self._storable(call, status, headers, body, now)
        shared: Entry | None = None
        if entry is not None:
            await self._serve(call, entry, 0.0, stored, age_header=False)
            shared = await self._store(call, entry, snapshot or tags, vary or ())
        else:
            response = Entry(status, headers, body, now, _NOT_SERVED)
            await self._serve(call, response, 0.0, capture.status_value, age_header=False)
            if not store and _shareable(headers):
                shared = response
        if self._hooks is not None:
            self._hooks.publish(
                CacheMiss(
                    route=plan.route, method=call.method, reason=reason, stored=entry is not None
                )
            )
        return shared

    def _remaining(self, call: _Call) -> float | None:
        """Seconds until the request's deadline, for a handler a stale response stands in for."""
        context = call.context
        if context is None or context.deadline is None:
            return None
        return max(context.deadline - self.clock.monotonic(), 0.0)

    async def _serve_stale_if_error(self, call: _Call, entry: Entry, status: int | None) -> None:
        age = max(self.clock.time() - entry.stored_at, 0.0)
        remaining = entry.fresh_s - age
        value = cache_status(
            "fwd=stale",
            f"fwd-status={status}" if status is not None else None,
            f"ttl={int(remaining)}",
            "detail=stale-if-error",
        )
        await self._serve(call, entry, age, value)
        self._stale_served(call, "stale-if-error", -remaining)

    def _storable(
        self,
        call: _Call,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        now: float,
    ) -> tuple[Entry | None, tuple[bytes, ...] | None]:
        """The entry to store for a response, and the header names it varies on; or ``None``."""
        if status not in CACHEABLE_STATUSES:
            return None, None
        control_value: bytes | None = None
        vary_value: bytes | None = None
        expires: bytes | None = None
        date: bytes | None = None
        for key, value in headers:
            if key == b"set-cookie":
                return None, None  # one client's cookie must never reach another
            if key == b"cache-control":
                control_value = value if control_value is None else control_value + b"," + value
            elif key == b"vary":
                vary_value = value if vary_value is None else vary_value + b"," + value
            elif key == b"expires":
                expires = value
            elif key == b"date":
                date = value
        vary: tuple[bytes, ...] | None = ()
        if vary_value is not None:
            vary = parse_vary(vary_value)
            if vary is None:
                return None, None  # Vary: * (RFC 9111 §4.1)
        plan = call.plan
        fresh_s = plan.ttl_s
        swr_s = plan.policy.stale_while_revalidate_s
        sie_s = plan.policy.stale_if_error_s
        if control_value is not None:
            control = parse_cache_control(control_value)
            if control.no_store or control.no_cache:
                return None, None
            if control.private and not call.partition:
                return None, None  # only a cache private to the caller may keep it
            if control.s_maxage is not None:
                fresh_s = float(control.s_maxage)
            elif control.max_age is not None:
                fresh_s = float(control.max_age)
            if control.stale_while_revalidate is not None:
                swr_s = float(control.stale_while_revalidate)
            if control.stale_if_error is not None:
                sie_s = float(control.stale_if_error)
            if control.must_revalidate or control.s_maxage is not None:
                swr_s = sie_s = 0.0  # RFC 9111 §5.2.2.2, §5.2.2.10: never served stale
        elif expires is not None:
            expires_at = http_date_seconds(expires)
            generated = http_date_seconds(date) if date is not None else now
            fresh_s = max((expires_at or 0.0) - (generated or now), 0.0)
        entry = Entry(status, headers, body, now, fresh_s, swr_s, sie_s)
        if entry.keep_s <= 0:
            return None, None
        return entry, vary

    async def _store(
        self, call: _Call, entry: Entry, tags: Any, vary: tuple[bytes, ...]
    ) -> Entry | None:
        """Write ``entry`` (after its response was sent); return it if it was stored."""
        plan = call.plan
        backend = self.backend
        key = call.key
        keep_s = entry.keep_s
        try:
            if not set(vary) <= set(plan.vary):
                # The response varies on headers the lookup did not key on: key on them from
                # now on, and leave a marker where other workers look, so they learn it too.
                marker_key = key
                plan.learn(vary)
                self._rescan(call)
                key = call.key = self._key(call)
                await backend.set(marker_key, encode_marker(plan.vary), ttl_s=keep_s)
            stored = await backend.set(key, encode_entry(entry), ttl_s=keep_s, tags=tags)
        except StoreError as exc:
            self._store_failed("set", exc)
            return None
        if not stored:
            return None  # a tag was purged while the handler ran: its result may be outdated
        if self._hooks is not None:
            self._hooks.publish(
                CacheStored(route=plan.route, bytes=len(entry.body), ttl_s=entry.fresh_s)
            )
        return entry

    # -- invalidation -----------------------------------------------------------------------------

    def _invalidating_plans(
        self, scope: Scope, method: str, route: str | None
    ) -> tuple[_Plan, ...] | None:
        memo_key = (method, route)
        try:
            return self._invalidations[memo_key]
        except KeyError:
            pass
        found: tuple[_Plan, ...] | None = None
        if route is not None:
            index = self._endpoint_index(scope)
            plans: list[_Plan] = []
            for endpoint_route in index.get(route, ()):
                methods, endpoint = endpoint_route
                if methods is not None and method not in methods:
                    continue
                tags = invalidated_by(endpoint)
                if tags:
                    plans.append(self._compile(CachePolicy(tags=tags, store=False), route))
            get_plan = self._plans.get(route) if route in self._plans else self._plan(scope, route)
            if get_plan is not None and method in get_plan.policy.invalidate_on:
                plans.append(get_plan)
            found = tuple(plans) or None
        if len(self._invalidations) < _MEMO_LIMIT:
            self._invalidations[memo_key] = found
        return found

    async def _invalidate(
        self, scope: Scope, receive: Receive, send: Send, plans: tuple[_Plan, ...], method: str
    ) -> None:
        """Run a write; if it succeeds, purge its tags before its response goes out."""
        path: str = scope["path"]
        tags = tuple(dict.fromkeys(tag for plan in plans for tag in plan.render_tags(path)))

        async def send_purging(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400 and tags:
                try:
                    await self.backend.purge(*tags)
                except StoreError as exc:
                    self._store_failed("purge", exc)
                    logger.warning(
                        "%s %s succeeded but purging cache tags %s failed: %s",
                        method,
                        path,
                        ", ".join(tags),
                        exc,
                    )
            await send(message)

        await self.app(scope, receive, send_purging)

    # -- plans ------------------------------------------------------------------------------------

    def _plan(self, scope: Scope, route: str | None) -> _Plan | None:
        """Compile the plan of ``route`` (or of the path, when no route matched)."""
        policy: CachePolicy | None = None
        if route is not None:
            for methods, endpoint in self._endpoint_index(scope).get(route, ()):
                if methods is None or "GET" in methods:
                    policy = policy_of(endpoint)
                    if policy is not None:
                        break
        target = route if route is not None else scope["path"]
        if policy is None:
            for rule in self._rules:
                if rule.matches(target):
                    policy = rule.policy
                    break
        plan = self._compile(policy, route) if policy is not None else None
        if plan is not None and route is not None and plan.public:
            dependencies = self._public_dependencies.get(route)
            if dependencies:
                # A hit is served before FastAPI runs the route's dependencies: an auth check
                # among them would not run for a public entry (docs/cache.md, gotchas).
                logger.warning(
                    "route %s is cached public=True and has dependencies (%s): a cache hit "
                    "skips them, so every caller gets the stored response; drop public=True "
                    "if one of them checks who may see it",
                    route,
                    ", ".join(dependencies),
                )
        if plan is not None and route is not None:
            # HEAD is answered from the GET entry only where the app itself answers HEAD
            # (Starlette routes do; FastAPI's GET routes answer 405): a hit never changes that.
            routes = self._endpoint_index(scope).get(route, ())
            plan.head = not routes or any(m is None or "HEAD" in m for m, _ in routes)
        if route is not None:
            self._plans[route] = plan
        return plan

    def _path_plan(self, scope: Scope) -> _Plan | None:
        """The plan of a request no route template matched: rules by raw path, memoized."""
        if not self._rules:
            return None
        path: str = scope["path"]
        memo = self._path_plans
        try:
            return memo[path]
        except KeyError:
            pass
        plan = self._plan(scope, None)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()  # raw paths are unbounded (ids, scanners): forget at once
        memo[path] = plan
        return plan

    def _compile(self, policy: CachePolicy, route: str | None) -> _Plan:
        return _Plan(
            policy,
            route,
            default_ttl_s=self.default_ttl_s,
            max_entry_bytes=self.max_entry_bytes,
            private_headers=self._private,
            negotiated=self._negotiate is not None,
        )

    def _endpoint_index(self, scope: Scope) -> dict[str, list[Any]]:
        """Route template → ``(methods, endpoint)`` of the app's routes, read once."""
        index = self._index
        if index is None:
            index = {}
            for route in route_endpoints(scope.get("app")):
                index.setdefault(route.template, []).append((route.methods, route.endpoint))
                if route.dependencies and (route.methods is None or "GET" in route.methods):
                    self._public_dependencies[route.template] = route.dependencies
            if scope.get("app") is not None:
                self._index = index
        return index

    # -- events ---------------------------------------------------------------------------------

    def _store_failed(self, operation: str, error: StoreError) -> None:
        if self._hooks is not None:
            self._hooks.publish(
                CacheStoreFailure(backend=self.backend.name, operation=operation, error=str(error))
            )

    def _stale_served(self, call: _Call, reason: str, stale_s: float) -> None:
        if self._hooks is not None:
            self._hooks.publish(
                CacheStaleServed(
                    route=call.plan.route, method=call.method, reason=reason, stale_s=stale_s
                )
            )

    def _coalesced(self, call: _Call) -> None:
        if self._hooks is not None:
            self._hooks.publish(RequestCoalesced(route=call.plan.route, method=call.method))


def _shareable(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response may be replayed to another request (coalescing): no cookie set."""
    return not any(key == b"set-cookie" for key, _ in headers)


async def _discard(message: Message) -> None:
    """The ``send`` of a background refresh: nobody is waiting for the response."""


async def _nothing() -> Entry | None:
    return None


def cache_options(
    settings: CacheSettings,
    *,
    backend: CacheBackend | None = None,
    negotiate_encoding: EncodingNegotiator | None = None,
    hooks: Hooks | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, Any]:
    """``CacheMiddleware`` keyword arguments from the ``cache`` settings section.

    ::

        app.add_middleware(CacheMiddleware, **cache_options(settings.cache, backend=backend))

    Raises:
        ConfigurationError: naming the ``BASTION_CACHE__*`` variable that is invalid.
    """
    rules = []
    for index, value in enumerate(settings.rules):
        try:
            rules.append(CacheRule.from_value(value))
        except ConfigurationError as exc:
            raise ConfigurationError(f"BASTION_CACHE__RULES[{index}]: {exc}") from None
    return {
        "backend": backend,
        "rules": rules,
        "default_ttl_s": settings.default_ttl_s,
        "max_entry_bytes": settings.max_entry_bytes,
        "honor_request_cache_control": settings.honor_request_cache_control,
        "private_headers": tuple(settings.private_headers),
        "negotiate_encoding": negotiate_encoding,
        "lock_ttl_s": settings.lock_ttl_s,
        "wait_s": settings.wait_s,
        "hooks": hooks,
        "clock": clock,
    }


def cache_layer(
    app: ASGIApp,
    /,
    *,
    rules: Iterable[CacheRule | str | Mapping[str, Any]] = (),
    **options: Any,
) -> ASGIApp:
    """``CacheMiddleware`` around ``app`` when any route can be cached, else ``app`` itself.

    Starlette builds its middleware stack when the app first runs, after the routes (and their
    ``@cache`` declarations) exist, so ``app.add_middleware(cache_layer, ...)`` decides with every
    declaration known: an app that caches nothing pays nothing. Arguments as for
    ``CacheMiddleware``.
    """
    rules = list(rules)
    if not rules and not declarations.count:
        return app
    return CacheMiddleware(app, rules=rules, **options)
