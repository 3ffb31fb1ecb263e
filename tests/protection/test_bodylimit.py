"""The body limit: 413 before reading a declared excess, while streaming an undeclared one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from bastion.events import BodyLimitExceeded
from bastion.exceptions import ConfigurationError, RequestBodyTooLarge
from bastion.protection import GuardMiddleware
from bastion.types import Message, Scope
from tests.protection.conftest import client_for, guarded_app, recorder, recording_app

pytestmark = pytest.mark.anyio


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    """A chunked request body: ``count`` chunks of ``size`` bytes, no Content-Length."""
    for _ in range(count):
        yield b"x" * size


async def test_a_body_within_the_limit_reaches_the_app() -> None:
    """Exactly the limit is accepted, declared or streamed."""
    app = guarded_app(max_body_bytes=100)
    async with client_for(app) as client:
        declared = await client.post("/echo", content=b"x" * 100)
        streamed = await client.post("/echo", content=chunks(4, 25))
    assert (200, "100") == (declared.status_code, declared.text)
    assert (200, "100") == (streamed.status_code, streamed.text)


async def test_a_declared_excess_is_refused_before_the_app_runs() -> None:
    """Content-Length over the limit: 413 problem, connection closed, the app never called."""
    app, called = recording_app()
    hooks, events = recorder(BodyLimitExceeded)
    guard = GuardMiddleware(app, max_body_bytes=100, hooks=hooks)
    async with client_for(guard) as client:
        response = await client.post("/echo", content=b"x" * 101)
    assert 413 == response.status_code
    assert "application/problem+json" == response.headers["content-type"]
    assert "close" == response.headers["connection"]
    assert [] == called
    assert [(100, True, 413)] == [(e.limit_bytes, e.declared, e.status) for e in events]


async def test_a_streamed_excess_is_cut_off_while_streaming() -> None:
    """Without Content-Length the app reads at most one chunk past the limit, then gets 413."""
    read: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            read.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    guard = GuardMiddleware(app, max_body_bytes=100)
    async with client_for(guard) as client:
        response = await client.post("/echo", content=chunks(1000, 30))
    assert 413 == response.status_code
    assert [30, 30, 30] == read  # the fourth chunk crossed the limit and was never handed over


async def test_per_route_limits_override_the_default() -> None:
    """The first pattern matching the route template decides; 0 means no limit there."""
    app = guarded_app(
        max_body_bytes=10, body_limits={"POST /echo": 0, "POST /uploads/*": 1000, "/*": 5}
    )
    async with client_for(app) as client:
        upload = await client.post("/uploads/a", content=b"x" * 1000)
        too_big = await client.post("/uploads/a", content=chunks(11, 100))
        unlimited = await client.post("/echo", content=chunks(100, 1000))
        other = await client.post("/ok", content=b"x" * 6)
    assert [200, 413, 200, 413] == [
        response.status_code for response in (upload, too_big, unlimited, other)
    ]


@pytest.mark.parametrize(
    ("http_version", "headers"),
    [("1.1", [(b"transfer-encoding", b"chunked")]), ("2", [])],
)
async def test_no_second_start_once_the_response_has_started(
    http_version: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """A streaming app gets RequestBodyTooLarge and no second start (chunked or HTTP/2 body)."""
    sent: list[Message] = []
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while (await receive()).get("more_body"):
                await send({"type": "http.response.body", "body": b".", "more_body": True})
        except RequestBodyTooLarge as exc:
            raised.append(exc)
            raise

    messages = [
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http", "method": "POST", "path": "/stream", "raw_path": b"/stream",
        "headers": headers, "client": ("203.0.113.7", 1), "scheme": "http",
        "http_version": http_version,
    }  # fmt: skip
    await GuardMiddleware(app, max_body_bytes=100)(scope, receive, send)
    assert ["http.response.start", "http.response.body"] == [m["type"] for m in sent]
    assert 100 == raised[0].limit_bytes  # type: ignore[attr-defined]


async def test_the_app_answering_the_error_itself_is_replaced_by_413() -> None:
    """FastAPI turns a failed body read into a 400; the client still gets the 413."""
    app = FastAPI()

    @app.post("/items")
    async def create(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app.add_middleware(GuardMiddleware, max_body_bytes=50)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/items", content=chunks(10, 20))
        fine = await client.post("/items", content=chunks(2, 20))
    assert 413 == response.status_code
    assert 413 == response.json()["status"]
    assert (200, {"size": 40}) == (fine.status_code, fine.json())


async def test_no_limit_means_no_counting() -> None:
    """max_body_bytes=None lets any body through."""
    app = guarded_app(max_body_bytes=None)
    async with client_for(app) as client:
        response = await client.post("/echo", content=chunks(100, 10_000))
    assert (200, "1000000") == (response.status_code, response.text)


def test_invalid_limits_are_refused() -> None:
    """Negative limits and bad patterns fail at construction."""
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        guarded_app(max_body_bytes=-1).build_middleware_stack()
    with pytest.raises(ConfigurationError, match="pattern"):
        guarded_app(body_limits={"uploads/*": 10}).build_middleware_stack()
    with pytest.raises(ConfigurationError, match="body_limits"):
        guarded_app(body_limits={"/uploads/*": -5}).build_middleware_stack()
