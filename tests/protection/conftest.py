"""Fixtures and helpers shared by the protection tests."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.events import Event, Hooks
from bastion.protection import GuardMiddleware
from bastion.types import ASGIApp, Receive, Scope, Send

E = TypeVar("E", bound=Event)

CLIENT = "203.0.113.7"
"""A public address (TEST-NET-3) that the guard treats as a client on the internet."""


async def _echo(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"{len(body)}")


def _status(status: int) -> Any:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(str(status), status_code=status)

    return endpoint


def guarded_app(**options: Any) -> Starlette:
    """A tiny Starlette app behind ``GuardMiddleware(**options)``.

    Routes: ``/ok`` (200), ``/login`` (401), ``/forbidden`` (403), ``/missing`` (404),
    ``/limited`` (429), ``/echo`` and ``/uploads/{name}`` (POST, answer the body's length).
    """
    app = Starlette(
        routes=[
            Route("/ok", _status(200)),
            Route("/login", _status(401)),
            Route("/forbidden", _status(403)),
            Route("/missing", _status(404)),
            Route("/limited", _status(429)),
            Route("/echo", _echo, methods=["POST"]),
            Route("/uploads/{name}", _echo, methods=["POST"]),
        ]
    )
    app.add_middleware(GuardMiddleware, **options)
    return app


def client_for(app: Any, address: str = CLIENT, *, scheme: str = "http") -> httpx.AsyncClient:
    """An HTTPX client that reaches ``app`` in process from ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://test")


async def statuses(app: Any, paths: list[str], address: str = CLIENT) -> list[int]:
    """The status of each GET to ``paths``, sent one after another from ``address``."""
    async with client_for(app, address) as client:
        return [(await client.get(path)).status_code for path in paths]


def recorder(event_type: type[E]) -> tuple[Hooks, list[E]]:
    """Hooks, and the list every ``event_type`` published on them lands in."""
    hooks = Hooks()
    events: list[E] = []
    hooks.subscribe(event_type, events.append)
    return hooks, events


def recording_app() -> tuple[ASGIApp, list[str]]:
    """A raw ASGI app that only records the paths it was called with (and answers nothing)."""
    called: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["path"])

    return app, called
