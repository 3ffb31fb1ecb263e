"""A minimal raw-ASGI client for middleware tests: no framework, no network, every message seen.

``client_for(app)`` is the framework-level counterpart: an httpx client talking to ``app`` in
process, with its lifespan running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bastion.testing import lifespan
from bastion.types import ASGIApp, Message


@asynccontextmanager
async def client_for(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``app`` in-process, with its lifespan running."""
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@dataclass
class RawResponse:
    """The messages an app sent for one request, with convenient views on them."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        """Status of the ``http.response.start`` message."""
        return int(self._start["status"])

    @property
    def headers(self) -> dict[str, str]:
        """Response headers, lower-cased names (last value wins)."""
        return {k.decode().lower(): v.decode() for k, v in self._start.get("headers", [])}

    @property
    def header_list(self) -> list[tuple[str, str]]:
        """Response headers in order, duplicates kept."""
        return [(k.decode().lower(), v.decode()) for k, v in self._start.get("headers", [])]

    @property
    def body(self) -> bytes:
        """Concatenated body of every ``http.response.body`` message."""
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)

    @property
    def _start(self) -> Message:
        return next(m for m in self.messages if m["type"] == "http.response.start")


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    query_string: bytes = b"",
) -> dict[str, Any]:
    """An HTTP scope as a server would build it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query_string,
        "headers": list(headers or []),
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


async def call(app: ASGIApp, scope: dict[str, Any], body: bytes = b"") -> RawResponse:
    """Send one request to ``app`` and collect what it sends back."""
    response = RawResponse()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        response.messages.append(message)

    await app(scope, receive, send)
    return response
