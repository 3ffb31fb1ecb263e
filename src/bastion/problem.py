"""RFC 9457 problem details, and the error boundary that turns any failure into one.

Every error bastion produces, and every error it catches, leaves as ``application/problem+json``::

    HTTP/1.1 500 Internal Server Error
    content-type: application/problem+json
    x-request-id: 3f1c...

    {"type":"about:blank","title":"Internal Server Error","status":500,
     "detail":"The server failed to handle the request.","request_id":"3f1c..."}

No stack trace, exception message or class name ever reaches the client; they go to the log, with
the same request id, so an operator can find them from what the client reports.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

import orjson

from bastion.context import SCOPE_KEY, RequestContext, get_context
from bastion.events import Hooks, UnhandledError
from bastion.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ErrorBoundaryMiddleware",
    "PROBLEM_CONTENT_TYPE",
    "TEMPORARY_REDUCED_CAPACITY",
    "TEMPORARY_REDUCED_CAPACITY_TITLE",
    "UnhandledResponder",
    "answer_unhandled",
    "problem_body",
    "problem_headers",
    "send_problem",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"

TEMPORARY_REDUCED_CAPACITY = (
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
)
"""Problem type of a 503 answered for want of capacity: a shed request, or rate limits that
cannot be checked under ``fail_closed`` (draft-ietf-httpapi-ratelimit-headers §5.2)."""
TEMPORARY_REDUCED_CAPACITY_TITLE = (
    "Request cannot be satisfied due to temporary server capacity constraints"
)
"""The title of a ``TEMPORARY_REDUCED_CAPACITY`` problem."""

logger = logging.getLogger("bastion.errors")

_INTERNAL_DETAIL = "The server failed to handle the request."


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialize a problem details object (RFC 9457 §3).

    Args:
        status: the HTTP status code, repeated in the body as the RFC advises.
        title: short summary of the problem type; defaults to the status phrase.
        detail: explanation specific to this occurrence, written for the client.
        type_: URI identifying the problem type; ``about:blank`` means "see the status".
        instance: URI of this occurrence, if it has one.
        extensions: extra members (``request_id``, ``errors``, ``retry_after_s``, ...).
    """
    problem: dict[str, Any] = {"type": type_, "title": title or _title(status), "status": status}
    if detail is not None:
        problem["detail"] = detail
    if instance is not None:
        problem["instance"] = instance
    if extensions:
        problem.update(extensions)
    return orjson.dumps(problem)


def problem_headers(
    body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """Response headers for a problem ``body``: content type, length, no caching, plus ``extra``."""
    return [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]


async def send_problem(
    scope: Scope,
    send: Send,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: Iterable[tuple[bytes, bytes]] = (),
    extensions: Mapping[str, Any] | None = None,
) -> None:
    """Send a complete problem+json response, tagged with the request id when there is one."""
    context = get_context(scope)
    members = dict(extensions) if extensions else {}
    if context is not None:
        members.setdefault("request_id", context.request_id)
    body = problem_body(status, title=title, detail=detail, type_=type_, extensions=members)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": problem_headers(body, headers),
        }
    )
    await send({"type": "http.response.body", "body": body})


class ErrorBoundaryMiddleware:
    """Turns any exception the app does not handle into a problem+json 500.

    If the response has already started, a 500 can no longer be sent: the boundary logs the error
    and returns without finishing the response, so the server closes the connection and the
    client sees a truncated response rather than a silently shortened one. WebSocket connections
    that fail are closed with code 1011.

    Args:
        app: the ASGI app to wrap.
        hooks: where ``UnhandledError`` events are published (metrics, dashboard).
    """

    __slots__ = ("app", "hooks")

    def __init__(self, app: ASGIApp, /, *, hooks: Hooks | None = None) -> None:
        self.app = app
        self.hooks = hooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer with a problem if it raises."""
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            await self.app(scope, receive, send)
            return

        context: RequestContext | None = scope.get(SCOPE_KEY)
        if context is not None and scope_type == "http":
            # The request context already watches the response start: no second send wrapper.
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # the boundary: every error the app did not handle ends here
                await answer_unhandled(
                    scope, send, exc, started=context.status is not None, hooks=self.hooks
                )
            return

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            # Set before sending: if the send itself fails, the start may be half on the wire.
            if message["type"] == "http.response.start" or message["type"] == "websocket.accept":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the boundary: every error the app did not handle ends here
            await answer_unhandled(scope, send, exc, started=started, hooks=self.hooks)


UnhandledResponder = Callable[[Scope, Receive, Send, Exception], Awaitable[bool]]
"""Answers an unhandled error in the app's own way (its registered 500 handler); returns
whether it did. Used instead of the problem+json 500 when it answers."""


async def answer_unhandled(
    scope: Scope,
    send: Send,
    exc: Exception,
    *,
    started: bool,
    hooks: Hooks | None,
    receive: Receive | None = None,
    responder: UnhandledResponder | None = None,
) -> None:
    """Log ``exc``, publish ``UnhandledError`` and answer with a problem 500 (or close).

    This is the error boundary's whole reaction, shared by ``ErrorBoundaryMiddleware`` and
    bastion's fused pipeline layer. When ``responder`` is given (the app registered its own 500
    handler) it answers instead of the problem, after the error was logged and published.
    """
    context = get_context(scope)
    request_id = context.request_id if context is not None else "-"
    route = context.route if context is not None else None
    method = scope.get("method", "WS")
    logger.error(
        "unhandled %s in %s %s (request_id=%s)%s",
        type(exc).__qualname__,
        method,
        route or scope.get("path", "?"),
        request_id,
        "; response already started, connection closed" if started else "",
        exc_info=exc,
        extra={"request_id": request_id, "route": route},
    )
    if hooks is not None:
        hooks.publish(
            UnhandledError(
                request_id=request_id,
                method=method,
                route=route,
                error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                response_started=started,
            )
        )
    try:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})
        elif started:
            pass
        elif responder is None or receive is None or not await responder(scope, receive, send, exc):
            await send_problem(scope, send, 500, detail=_INTERNAL_DETAIL)
    except Exception:  # the client is gone or the server refused: nothing left to tell it
        logger.debug("could not send the error response", exc_info=True)
