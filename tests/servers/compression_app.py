"""An app served by a real uvicorn in the compression tests: JSON, a held stream, an SSE feed.

The streams send their first part, then wait until the test calls ``/release/{token}``, so a
test can prove the client decoded the first part while the response was still open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse

from bastion.compression import CompressionMiddleware

ITEMS = [{"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"]} for i in range(40)]

app = FastAPI()
app.add_middleware(CompressionMiddleware)

_releases: dict[str, anyio.Event] = {}


def _release(token: str) -> anyio.Event:
    return _releases.setdefault(token, anyio.Event())


@app.get("/ping")
async def ping() -> PlainTextResponse:
    """Answer once the server is up."""
    return PlainTextResponse("pong")


@app.get("/items")
async def items() -> list[dict[str, object]]:
    """About 2 KB of JSON: compressed for clients that accept it."""
    return ITEMS


@app.get("/release/{token}")
async def release(token: str) -> PlainTextResponse:
    """Let the stream waiting on ``token`` finish."""
    _release(token).set()
    return PlainTextResponse("released")


@app.get("/stream/{token}")
async def stream(token: str) -> StreamingResponse:
    """One NDJSON line, then the rest once ``token`` is released."""

    async def lines() -> AsyncIterator[bytes]:
        yield b'{"part": 1}\n'
        with anyio.fail_after(10):
            await _release(token).wait()
        yield b'{"part": 2}\n' * 100

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.get("/events/{token}")
async def events(token: str) -> StreamingResponse:
    """One server-sent event, then a last one once ``token`` is released."""

    async def feed() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        with anyio.fail_after(10):
            await _release(token).wait()
        yield b"data: last\n\n"

    return StreamingResponse(feed(), media_type="text/event-stream")
