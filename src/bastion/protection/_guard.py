"""``GuardMiddleware``: DESIGN §4 layer 5, in front of everything that costs the app work.

In this order, each request is checked against:

1. the deny list (403; the allow list wins over it and exempts from bans),
2. the bans this process knows of (403 with ``Retry-After``; no store round trip),
3. its path: NUL bytes, ``..`` segments in any encoding, invalid UTF-8 (400),
4. its declared ``Content-Length`` against the route's body limit (413),

then the app runs with ``receive`` counting body bytes against the limit and ``send`` adding the
security headers. A response with a 4xx status (the guard's own 400/413 included) is an offence
recorded after the response went out, and enough of them in a window ban the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from bastion._asgi import get_header, retry_after
from bastion._routes import RoutePattern
from bastion.context import SCOPE_KEY, RequestContext
from bastion.events import (
    BannedRequest,
    BodyLimitExceeded,
    NetworkDenied,
    PathRejected,
    RequestRejected,
)
from bastion.exceptions import ConfigurationError, RequestBodyTooLarge
from bastion.problem import send_problem
from bastion.protection._bans import Bans
from bastion.protection._bodylimit import BodyLimits
from bastion.protection._headers import SecurityHeaders
from bastion.protection._networks import ALLOWED, DENIED, Network, NetworkList
from bastion.protection._paths import path_problem
from bastion.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bastion._clock import Clock
    from bastion.events import Hooks
    from bastion.settings import GuardSettings
    from bastion.stores import Store

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GuardMiddleware"]

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
"""The default body limit: 10 MiB."""

_PATH_DETAIL = {
    "nul": "The request path contains a NUL byte.",
    "traversal": "The request path contains a '..' segment.",
    "invalid_utf8": "The request path is not valid UTF-8.",
}
_BODILESS_STATUS = -1


class GuardMiddleware:
    """Deny lists, bans, path checks, the body limit and security headers in one layer.

    Example::

        app.add_middleware(
            GuardMiddleware,
            max_body_bytes=1024 * 1024,
            body_limits={"POST /uploads/*": 100 * 1024 * 1024},
            deny=["198.51.100.0/24"],
            bans=Bans(RedisStore.from_url(url)),  # call bans.start() at startup
            security_headers=SecurityHeaders(hsts_max_age_s=31_536_000),
        )

    Args:
        app: the ASGI app to wrap.
        max_body_bytes: largest request body, in bytes; ``None`` or ``0`` for no limit.
        body_limits: per-route limits, ``{"[METHODS ]PATTERN": bytes}`` (``*`` matches anything;
            ``None`` or ``0``: no limit), matched on the route template bastion's request
            context resolved, else on the raw path. The first match wins over
            ``max_body_bytes``.
        allow: addresses or networks never denied and never banned.
        deny: addresses or networks refused with 403.
        bans: bans bursts of auth failures and client errors; ``None`` bans nobody.
        check_paths: refuse paths with NUL bytes, ``..`` segments or invalid UTF-8 (400).
        security_headers: the headers to add to responses; ``None`` adds none.
        hsts_only: add only the HSTS header of ``security_headers``: another layer adds the
            others (``Bastion`` has its pipeline add them, in the header copy it makes anyway).
        hooks: where ``RequestRejected`` events are published.
        trusted_proxies: addresses or networks of TLS-terminating proxies whose
            ``X-Forwarded-Proto: https`` counts as TLS for HSTS (bastion passes
            ``BASTION_CONTEXT__TRUSTED_PROXIES``). Requests whose ``scope["scheme"]`` is
            ``https`` count either way.

    Raises:
        ConfigurationError: for an invalid network, pattern, limit or header.
    """

    __slots__ = (
        "_bans",
        "_check_paths",
        "_header_names",
        "_headers",
        "_headers_added",
        "_hooks",
        "_hsts",
        "_limits",
        "_networks",
        "_proxies",
        "app",
    )

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
        body_limits: Mapping[str, int | None] | None = None,
        allow: Iterable[str | Network] = (),
        deny: Iterable[str | Network] = (),
        bans: Bans | None = None,
        check_paths: bool = True,
        security_headers: SecurityHeaders | None = SecurityHeaders(),  # noqa: B008 - frozen
        hsts_only: bool = False,
        hooks: Hooks | None = None,
        trusted_proxies: Iterable[str | Network] = (),
    ) -> None:
        self.app = app
        limits = BodyLimits(max_body_bytes, body_limits or {})
        self._limits = limits if limits else None
        networks = NetworkList(allow, deny)
        self._networks = networks if networks else None
        self._bans = bans if bans is not None and bans.enabled else None
        self._check_paths = check_paths
        if security_headers is not None:
            self._headers, self._hsts = security_headers.encoded()
            if hsts_only:
                self._headers = ()
        else:
            self._headers, self._hsts = (), None
        self._header_names = frozenset(name for name, _ in self._headers) | (
            {self._hsts[0]} if self._hsts is not None else set()
        )
        self._headers_added = bool(self._headers) or self._hsts is not None
        self._hooks = hooks
        proxies = NetworkList(allow=trusted_proxies)
        self._proxies = proxies if proxies and self._hsts is not None else None

    @property
    def bans(self) -> Bans | None:
        """The ban tracker, or ``None`` when nobody is banned."""
        return self._bans

    @staticmethod
    def options_from_settings(
        settings: GuardSettings,
        *,
        store: Store | None = None,
        hooks: Hooks | None = None,
        clock: Clock | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Keyword arguments for this middleware from ``Settings.guard``.

        ``trusted_proxies`` are ``Settings.context.trusted_proxies``, whose forwarded scheme
        counts for HSTS.

        ``options["bans"]`` is the ``Bans`` (or ``None``): start it with the app.

        Raises:
            ConfigurationError: naming the ``BASTION_GUARD__*`` variable that is invalid.
        """
        body_limits: dict[str, int | None] = {}
        for entry in settings.body_limits:
            pattern, _, limit = entry.rpartition("=")
            try:
                RoutePattern(pattern.strip())
            except ConfigurationError as exc:
                raise ConfigurationError(f"BASTION_GUARD__BODY_LIMITS: {exc}") from None
            body_limits[pattern.strip()] = int(limit)
        bans = None
        if settings.bans and (settings.auth_failures or settings.client_errors):
            bans = Bans(
                store,
                auth_failures=settings.auth_failures,
                client_errors=settings.client_errors,
                window_s=settings.window_s,
                ban_s=settings.ban_s,
                max_ban_s=settings.max_ban_s,
                memory_s=settings.memory_s,
                ignored_statuses=settings.ignored_statuses,
                ban_private_networks=settings.ban_private_networks,
                ipv6_prefix=settings.ipv6_prefix,
                on_store_error=settings.on_store_error,
                hooks=hooks,
                clock=clock,
            )
        headers = None
        if settings.security_headers:
            headers = SecurityHeaders(
                content_type_options=settings.content_type_options,
                frame_options=None if settings.frame_options == "off" else settings.frame_options,
                referrer_policy=settings.referrer_policy or None,
                content_security_policy=settings.content_security_policy or None,
                hsts_max_age_s=settings.hsts_max_age_s,
                hsts_include_subdomains=settings.hsts_include_subdomains,
                hsts_preload=settings.hsts_preload,
            )
            try:
                headers.encoded()
            except ConfigurationError as exc:
                raise ConfigurationError(f"BASTION_GUARD__CONTENT_SECURITY_POLICY: {exc}") from None
        return {
            "max_body_bytes": settings.max_body_bytes or None,
            "body_limits": body_limits,
            "allow": list(settings.allow),
            "deny": list(settings.deny),
            "bans": bans,
            "check_paths": settings.check_paths,
            "security_headers": headers,
            "hooks": hooks,
            "trusted_proxies": list(trusted_proxies),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse what the guard refuses; otherwise run the app with the limit and headers."""
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        context: RequestContext | None = scope.get(SCOPE_KEY)
        if context is not None:
            client, method, route = context.client, context.method, context.route
        else:
            peer: Any = scope.get("client")
            client, method, route = (peer[0] if peer else None), scope["method"], None

        allowed = False
        networks = self._networks
        if networks is not None and client is not None:
            verdict = networks.verdict(client)
            if verdict == DENIED:
                await self._refuse(scope, send, context, NetworkDenied, client=client)
                return
            allowed = verdict == ALLOWED
        bans = self._bans
        key = None
        if bans is not None and not allowed:
            key = bans.key(client)
            if key is not None and (left := bans.banned_for(key)):
                await self._refuse(
                    scope, send, context, BannedRequest, client=key, retry_after_s=left
                )
                return

        if self._check_paths and (problem := path_problem(scope)) is not None:
            await self._refuse(scope, send, context, PathRejected, problem=problem)
            await self._offence(key, 400, context, scope)
            return

        limits = self._limits
        limit = None
        if limits is not None:
            limit = limits.limit_for(method, route, scope["path"])
        if limit is not None:
            declared, chunked = _framing(scope["headers"])
            if declared is not None and declared > limit:
                await self._refuse(
                    scope, send, context, BodyLimitExceeded, limit_bytes=limit, declared=True
                )
                await self._offence(key, 413, context, scope)
                return
            if declared is not None or (not chunked and scope.get("http_version") != "2"):
                # The server delivers no more than Content-Length bytes, and an HTTP/1 request
                # with neither Content-Length nor Transfer-Encoding has no body: nothing to count.
                limit = None

        if limit is not None:
            status = await _Responder(self, scope, context, limit).run(receive, send)
        elif not self._headers_added and (key is None or context is not None):
            # Nothing to add, and the status, if needed, is the context's: bastion's pipeline
            # records it on its way out.
            await self.app(scope, receive, send)
            if key is None or context is None:
                return
            status = context.status if context.status is not None else _BODILESS_STATUS
        else:
            # The common case: no body to count. One closure instead of a responder.
            added = self._headers if self._hsts is None else tuple(self._added(scope))
            names = self._header_names
            status = _BODILESS_STATUS

            async def guarded_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if added:
                        message["headers"] = _with_missing(message.get("headers", ()), added, names)
                await send(message)

            await self.app(scope, receive, guarded_send)
        if key is not None and status >= 400:
            await self._offence(key, status, context, scope)

    # -- refusals ---------------------------------------------------------------------------

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        context: RequestContext | None,
        event: type[RequestRejected],
        **members: Any,
    ) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if event is NetworkDenied:
            status, detail = 403, "Requests from this network are not accepted."
        elif event is BannedRequest:
            status = 403
            wait = retry_after(members["retry_after_s"])
            detail = f"This client sent too many failing requests and is blocked for {wait} s."
            headers.append((b"retry-after", str(wait).encode()))
        elif event is PathRejected:
            status, detail = 400, _PATH_DETAIL[members["problem"]]
        else:
            status = 413
            detail = f"The request body exceeds the limit of {members['limit_bytes']} bytes."
            # The body was never read: the connection cannot carry another request.
            headers.append((b"connection", b"close"))
        self._publish(event, scope, context, status, members)
        await send_problem(scope, send, status, detail=detail, headers=headers + self._added(scope))

    def _publish(
        self,
        event: type[RequestRejected],
        scope: Scope,
        context: RequestContext | None,
        status: int,
        members: dict[str, Any],
    ) -> None:
        hooks = self._hooks
        if hooks is not None and hooks.wants(event):
            method = context.method if context is not None else scope.get("method", "WS")
            route = context.route if context is not None else None
            hooks.publish(event(method=method, route=route, status=status, **members))

    async def _offence(
        self, key: str | None, status: int, context: RequestContext | None, scope: Scope
    ) -> None:
        bans = self._bans
        if key is None or bans is None:
            return
        method = context.method if context is not None else scope.get("method", "WS")
        route = context.route if context is not None else None
        await bans.record(key, status, method=method, route=route)

    def _added(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The security headers for a response of the guard's own."""
        headers = list(self._headers)
        if self._hsts is not None and self._over_tls(scope):
            headers.append(self._hsts)
        return headers

    def _over_tls(self, scope: Scope) -> bool:
        """Whether the request reached the client's side over TLS: the server says so, or a
        trusted proxy in front of it does (``X-Forwarded-Proto``)."""
        if scope.get("scheme") == "https":
            return True
        proxies = self._proxies
        peer: Any = scope.get("client")
        if proxies is None or not peer or proxies.verdict(peer[0]) != ALLOWED:
            return False
        forwarded = get_header(scope["headers"], b"x-forwarded-proto")
        return forwarded is not None and forwarded.rpartition(b",")[2].strip().lower() == b"https"

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handshakes from denied or banned clients, or with bad paths, are refused (403)."""
        context: RequestContext | None = scope.get(SCOPE_KEY)
        peer: Any = scope.get("client")
        client = context.client if context is not None else (peer[0] if peer else None)
        refusal: tuple[type[RequestRejected], dict[str, Any]] | None = None
        allowed = False
        if self._networks is not None and client is not None:
            verdict = self._networks.verdict(client)
            if verdict == DENIED:
                refusal = (NetworkDenied, {"client": client})
            allowed = verdict == ALLOWED
        bans = self._bans
        if refusal is None and bans is not None and not allowed:
            key = bans.key(client)
            if key is not None and (left := bans.banned_for(key)):
                refusal = (BannedRequest, {"client": key, "retry_after_s": left})
        if refusal is None and self._check_paths and (problem := path_problem(scope)):
            refusal = (PathRejected, {"problem": problem})
        if refusal is None:
            await self.app(scope, receive, send)
            return
        event, members = refusal
        self._publish(event, scope, context, 403, members)
        # A close before the handshake is accepted makes the server answer HTTP 403.
        await send({"type": "websocket.close", "code": 1008})


class _Responder:
    """One request's trip through the app: counts the body, adds headers, watches the status.

    Once the body limit trips, the app's response is replaced by the 413 if it has not started
    (whatever the app, or a framework's error handler, was about to send); if it had started,
    nothing more is sent and the server closes the connection.
    """

    __slots__ = (
        "context",
        "guard",
        "limit",
        "received",
        "replaced",
        "scope",
        "send",
        "started",
        "status",
        "tripped",
    )

    def __init__(
        self,
        guard: GuardMiddleware,
        scope: Scope,
        context: RequestContext | None,
        limit: int | None,
    ) -> None:
        self.guard = guard
        self.scope = scope
        self.context = context
        self.limit = limit
        self.received = 0
        self.started = False
        self.replaced = False
        self.tripped = False
        self.status = _BODILESS_STATUS

    async def run(self, receive: Receive, send: Send) -> int:
        """Run the app; return the response status (``-1`` if none was sent)."""
        self.send = send
        guard = self.guard
        headers = guard._headers
        hsts = guard._hsts if guard._hsts is not None and guard._over_tls(self.scope) else None
        added = (*headers, hsts) if hsts is not None else headers

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.tripped:
                    await self._too_large()
                    return
                self.started = True
                self.status = message["status"]
                if added:
                    names = guard._header_names
                    message["headers"] = _with_missing(message.get("headers", ()), added, names)
            elif self.replaced:
                return  # the body of a response the 413 replaced
            await send(message)

        limit = self.limit
        if limit is None:
            await guard.app(self.scope, receive, guarded_send)
            return self.status

        async def counting_receive() -> Message:
            if self.tripped:
                raise RequestBodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > limit:
                    self.tripped = True
                    guard._publish(
                        BodyLimitExceeded,
                        self.scope,
                        self.context,
                        413,
                        {"limit_bytes": limit, "declared": False},
                    )
                    raise RequestBodyTooLarge(limit)
            return message

        try:
            await guard.app(self.scope, counting_receive, guarded_send)
        except RequestBodyTooLarge:
            if not self.tripped:
                raise  # another layer's limit: not ours to answer
            if not self.started and not self.replaced:
                await self._too_large()
        return 413 if self.tripped and not self.started else self.status

    async def _too_large(self) -> None:
        if self.replaced:
            return
        self.replaced = True
        await send_problem(
            self.scope,
            self.send,
            413,
            detail=f"The request body exceeds the limit of {self.limit} bytes.",
            headers=[(b"connection", b"close"), *self.guard._added(self.scope)],
        )


def _framing(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """``(Content-Length or None, whether Transfer-Encoding is present)`` of a request."""
    declared = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None  # servers reject malformed framing before the app sees it
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        declared = None  # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3)
    return declared, chunked


def _with_missing(
    headers: Iterable[tuple[bytes, bytes]],
    added: tuple[tuple[bytes, bytes], ...],
    names: frozenset[bytes],
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus each of ``added`` whose name is not among them (never mutated).

    ``names`` are the names of ``added``. ASGI response header names are lower-case, so a plain
    comparison suffices; the common case (the app set none of them) is one pass and one copy.
    """
    for name, _ in headers:
        if name in names:
            present = {name for name, _ in headers}
            return [*headers, *(header for header in added if header[0] not in present)]
    return [*headers, *added]
