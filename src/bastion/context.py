"""One ``RequestContext`` per request, filled once, early, and read by every feature.

The context carries what rate limits, idempotency, cache privacy, logs and metrics all need to
agree on: the request id, the W3C trace id, the route template, the client address and, once
authentication has run, the principal. It is reachable two ways:

- from the ASGI scope: ``scope["bastion.context"]`` (what middleware uses; no ContextVar lookup);
- from anywhere in the request's task: ``current_context()`` (handlers, logging filters,
  outbound HTTP calls).

FastAPI example::

    from bastion.context import current_context

    @app.get("/whoami")
    async def whoami() -> dict[str, str | None]:
        context = current_context()
        return {"request_id": context.request_id, "client": context.client}
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from contextvars import ContextVar
from operator import itemgetter
from typing import Any, Protocol

from bastion._asgi import scope_path
from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._routes import RouteResolver
from bastion.exceptions import ConfigurationError
from bastion.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ContextBuilder",
    "RequestContext",
    "RequestContextMiddleware",
    "RequestObserver",
    "SCOPE_KEY",
    "current_context",
    "get_context",
    "new_id",
    "parse_traceparent",
]

SCOPE_KEY = "bastion.context"
"""Key of the ``RequestContext`` in the ASGI scope."""

_current: ContextVar[RequestContext | None] = ContextVar("bastion_request_context", default=None)

# Request ids end up in logs and response headers: accept only a conservative alphabet, bounded in
# length, so a client cannot inject log lines or headers (CWE-117/CWE-113) through its id.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,128}").fullmatch
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class RequestContext:
    """What bastion knows about the request being served.

    Attributes:
        request_id: the incoming ``X-Request-ID`` if valid, else a fresh 32-hex-digit id.
        trace_id: W3C trace id: from a valid incoming ``traceparent``, else equal to a generated
            request id (so a trace and its request share one id when nothing came in).
        parent_span_id: the caller's span id from ``traceparent``, or ``None``.
        trace_flags: the W3C trace flags byte (``0x01`` sampled).
        method: HTTP method (``"WS"`` for WebSocket connections).
        path: the raw path, never used as a metric label.
        route: the route template the app will route to, or ``None`` when none matches.
        client: the client's IP address (the socket peer unless a trusted proxy forwarded it).
        principal: who is calling, set by authentication (API key id, user), else ``None``.
        priority: scheduling priority for load shedding (higher runs first).
        deadline: monotonic time by which the response is due, or ``None``.
        started: monotonic time the request entered bastion.
        status: the response status once ``http.response.start`` was sent, else ``None``; layers
            read it instead of each wrapping ``send`` to find out (one wrapper per request).
        response_bytes: body bytes sent so far (what went through ``send``, before any
            compression a server might add).
        decisions: names of the events bastion published while serving the request
            (``rate_limited``, ``cache_hit``, ``request_shed``), each once, in order; ``None``
            when there were none. Filled while the access log is on, which writes them.
    """

    __slots__ = (
        "_span_id",
        "client",
        "deadline",
        "decisions",
        "method",
        "parent_span_id",
        "path",
        "principal",
        "priority",
        "request_id",
        "response_bytes",
        "route",
        "started",
        "status",
        "trace_flags",
        "trace_id",
    )

    def __init__(
        self,
        request_id: str,
        trace_id: str,
        method: str,
        path: str,
        route: str | None = None,
        client: str | None = None,
        parent_span_id: str | None = None,
        trace_flags: int = 1,
        principal: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
        started: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.trace_flags = trace_flags
        self.method = method
        self.path = path
        self.route = route
        self.client = client
        self.principal = principal
        self.priority = priority
        self.deadline = deadline
        self.started = started
        self.status: int | None = None
        self.response_bytes = 0
        self._span_id: str | None = None
        self.decisions: list[str] | None = None

    @property
    def span_id(self) -> str:
        """This server's span id for the request (16 hex digits), made on first use."""
        if self._span_id is None:
            self._span_id = os.urandom(8).hex()
        return self._span_id

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` value to send on outbound calls made for this request."""
        return f"00-{self.trace_id}-{self.span_id}-{self.trace_flags:02x}"

    def __repr__(self) -> str:
        return (
            f"RequestContext(request_id={self.request_id!r}, trace_id={self.trace_id!r}, "
            f"method={self.method!r}, route={self.route!r}, client={self.client!r}, "
            f"principal={self.principal!r})"
        )


class RequestObserver(Protocol):
    """Watches every HTTP request bastion serves: what telemetry (metrics, access log, spans)
    implements. ``Bastion`` calls one observer around the app, inside the error boundary's
    reach, so it sees the final status of every response, problem responses included.

    Both calls run on the request's task, in the request's contextvars context.
    """

    def request_started(self, context: RequestContext, scope: Scope) -> Any:
        """The request is about to reach the app; the return value is handed back at the end."""

    def request_finished(
        self, context: RequestContext, scope: Scope, state: Any, error: BaseException | None
    ) -> None:
        """The response is complete (``context.status`` is ``None`` if none was sent).

        ``error`` is what the app raised (already answered by the error boundary), or the
        cancellation that ended the request, or ``None``.
        """


def current_context() -> RequestContext:
    """The context of the request being served by the current task.

    Raises:
        LookupError: called outside a request (no ``RequestContextMiddleware`` above).
    """
    context = _current.get()
    if context is None:
        raise LookupError("no request context: is bastion's RequestContextMiddleware installed?")
    return context


def get_context(scope: Scope) -> RequestContext | None:
    """The context stored in ``scope``, or ``None`` before ``RequestContextMiddleware`` ran."""
    context: RequestContext | None = scope.get(SCOPE_KEY)
    return context


def parse_traceparent(value: bytes) -> tuple[str, str, int] | None:
    """Parse a W3C ``traceparent`` strictly: ``(trace_id, parent_span_id, flags)`` or ``None``.

    Invalid input restarts the trace, as the spec requires: unknown characters, upper-case hex,
    version ``ff``, all-zero ids, or a version-00 header with trailing data.
    """
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace, span = trace_id.decode(), span_id.decode()
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return trace, span, int(flags, 16)


class _RandomIds:
    """128-bit random ids as 32 hex digits, drawn from a pre-encoded block of ``os.urandom``.

    One ``os.urandom`` call plus ``hex()`` per request costs about as much as the rest of the
    request context together; slicing a block encoded once per 256 ids costs a fraction of it.
    The block is discarded in a forked child so that two workers never hand out the same ids.
    """

    __slots__ = ("_block", "_position")

    _IDS_PER_BLOCK = 256

    def __init__(self) -> None:
        self._block = ""
        self._position = 0

    def reset(self) -> None:
        self._block = ""
        self._position = 0

    def next(self) -> str:
        """A new random id: 32 lower-case hex digits (128 bits from ``os.urandom``)."""
        position = self._position
        if position >= len(self._block):
            self._block = os.urandom(16 * self._IDS_PER_BLOCK).hex()
            position = 0
        self._position = position + 32
        return self._block[position : position + 32]


_ids = _RandomIds()
os.register_at_fork(after_in_child=_ids.reset)
new_id = _ids.next


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_NAME = itemgetter(0)
"""A header's name, from its (name, value) pair."""


def _parse_networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ConfigurationError(
                f"trusted proxy {value!r} is not an IP address or CIDR network"
            ) from exc
    return tuple(networks)


class ContextBuilder:
    """Builds request contexts and echoes their ids: the logic of ``RequestContextMiddleware``.

    Kept apart from the middleware so that ``Bastion`` can run it inside its single fused
    pipeline layer without a second copy of the logic. Arguments as for the middleware.
    """

    __slots__ = (
        "_extra",
        "_forwarded",
        "_header",
        "_header_out",
        "_names",
        "_resolver",
        "_trust_id",
        "_trusted",
        "clock",
    )

    def __init__(
        self,
        *,
        request_id_header: str = "X-Request-ID",
        trust_incoming_request_id: bool = True,
        trusted_proxies: Iterable[str | Network] = (),
        forwarded_header: str = "X-Forwarded-For",
        route_resolver: RouteResolver | None = None,
        clock: Clock = SYSTEM_CLOCK,
        response_headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.clock = clock
        # Fixed headers every response gets unless the app set them (``Bastion`` passes the
        # guard's security headers here): added in the copy of the header list this wrapper
        # makes anyway, instead of by a second send wrapper.
        self._extra = tuple((name.lower(), value) for name, value in response_headers)
        self._header = request_id_header.lower().encode("latin-1")
        self._names = frozenset(name for name, _ in self._extra) | {self._header}
        self._header_out = request_id_header.encode("latin-1")
        self._trust_id = trust_incoming_request_id
        self._trusted = _parse_networks(trusted_proxies)
        self._forwarded = forwarded_header.lower().encode("latin-1")
        self._resolver = route_resolver

    def echo(self, context: RequestContext, send: Send) -> Send:
        """Wrap ``send`` to record the response status and add the request id header, and the
        fixed ``response_headers``, each unless the app set it."""
        builder = self  # three cells per request; the rest is read when the response starts

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Recorded before sending: if the send fails, the start may be half on the wire.
                context.status = message["status"]
                headers = message.get("headers", ())
                header = (builder._header_out, context.request_id.encode("latin-1"))
                # ASGI response header names are lower-case, so a plain comparison suffices.
                if builder._names.isdisjoint(map(_NAME, headers)):
                    # Headers may be a tuple or a list owned by the framework; never mutate it.
                    message["headers"] = [*headers, header, *builder._extra]
                else:  # the app set one of ours: add only the others
                    present = {key for key, _ in headers}
                    added = [] if builder._header in present else [header]
                    added += [item for item in builder._extra if item[0] not in present]
                    message["headers"] = [*headers, *added]
            else:
                context.response_bytes += len(message.get("body", b""))
            await send(message)

        return send_with_id

    def build(self, scope: Scope) -> RequestContext:
        """The context of the request in ``scope`` (headers read once, route resolved)."""
        # Indexed in C rather than scanned in Python: a browser sends a dozen headers or more.
        # A repeated name keeps its last value (the forwarded chain is read in full below).
        headers = dict(scope["headers"])
        request_id = headers.get(self._header)
        traceparent = headers.get(b"traceparent")
        if request_id is not None and self._trust_id and _VALID_REQUEST_ID(request_id):
            rid = request_id.decode("latin-1")
            generated = None
        else:
            rid = generated = new_id()

        parent = parse_traceparent(traceparent) if traceparent is not None else None
        if parent is not None:
            trace_id, parent_span_id, flags = parent
        else:
            trace_id = generated if generated is not None else new_id()
            parent_span_id, flags = None, 1

        method = scope.get("method", "WS")
        path: str = scope["path"]
        resolver = self._resolver
        route = None
        if resolver is not None:
            route = resolver.resolve(method, scope_path(scope) if scope.get("root_path") else path)

        peer: Any = scope.get("client")
        client: str | None = peer[0] if peer else None
        if client is not None and self._trusted and self._forwarded in headers:
            client = self._forwarded_client(client, scope["headers"])

        # Positional: this runs once per request, and keyword calls cost measurably more.
        return RequestContext(
            rid, trace_id, method, path, route, client, parent_span_id, flags,
            None, 0, None, self.clock.monotonic(),
        )  # fmt: skip

    def _forwarded_client(self, host: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        if not self._is_trusted(host):
            return host
        # Every line of the header, in order: a proxy may add a line rather than append.
        name = self._forwarded
        forwarded = b",".join([value for key, value in headers if key == name])
        # Walk the chain from the nearest hop back; the first address not of a trusted proxy is
        # the client. Everything left of it was written by the client and means nothing.
        for raw in reversed(forwarded.split(b",")):
            candidate = raw.strip().decode("latin-1")
            if not candidate:
                continue
            if not self._is_trusted(candidate):
                try:
                    return str(ipaddress.ip_address(candidate))
                except ValueError:
                    return host  # a malformed hop: trust nothing beyond the peer
            host = candidate
        return host

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


class RequestContextMiddleware:
    """Fills the ``RequestContext`` of every HTTP and WebSocket request, and echoes the id.

    Args:
        app: the ASGI app to wrap.
        request_id_header: header read for an incoming id and set on every response.
        trust_incoming_request_id: honour a valid incoming id (else always generate one).
        trusted_proxies: addresses or CIDR networks of proxies whose ``forwarded_header`` is
            believed. **Security:** empty by default, so ``X-Forwarded-For`` is ignored and the
            client is the socket peer; a client can never choose its own address.
        forwarded_header: the header a trusted proxy appends the client address to.
        route_resolver: finds the route template (``AppRouteResolver(app)`` for a Starlette or
            FastAPI app); without one, ``route`` stays ``None``.
        clock: time source for ``started``.
    """

    __slots__ = ("app", "builder")

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        request_id_header: str = "X-Request-ID",
        trust_incoming_request_id: bool = True,
        trusted_proxies: Iterable[str | Network] = (),
        forwarded_header: str = "X-Forwarded-For",
        route_resolver: RouteResolver | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.builder = ContextBuilder(
            request_id_header=request_id_header,
            trust_incoming_request_id=trust_incoming_request_id,
            trusted_proxies=trusted_proxies,
            forwarded_header=forwarded_header,
            route_resolver=route_resolver,
            clock=clock,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Build the context, publish it to the scope and a ContextVar, echo the request id."""
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            await self.app(scope, receive, send)
            return
        context = self.builder.build(scope)
        scope[SCOPE_KEY] = context
        token = _current.set(context)
        try:
            await self.app(scope, receive, self.builder.echo(context, send))
        finally:
            _current.reset(token)
