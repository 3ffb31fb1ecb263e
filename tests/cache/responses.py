"""A small FastAPI app with counted endpoints behind ``CacheMiddleware``, for the cache tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, CacheMiddleware, cache, coalesce, invalidates

BASE = "http://testserver"


class CountedApp:
    """A FastAPI app whose endpoints count their runs; tests change what they answer."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.version = 1
        self.fail: BaseException | None = None
        self.status = 200
        self.headers: dict[str, str] = {}
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.app = FastAPI()
        self._routes()

    async def _maybe_wait(self) -> None:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()

    def _routes(self) -> None:
        app = self.app
        state = self

        @app.api_route("/albums", methods=["GET", "HEAD"])
        @cache(ttl=60, tags=["albums"], invalidate_on=["POST"])
        async def albums(request: Request) -> Response:
            state.runs["albums"] += 1
            await state._maybe_wait()
            if state.fail is not None:
                raise state.fail
            return JSONResponse(
                {"version": state.version, "query": str(request.query_params)},
                status_code=state.status,
                headers=state.headers,
            )

        @app.post("/albums")
        async def add_album() -> dict[str, bool]:
            state.version += 1
            return {"ok": True}

        @app.get("/albums/{album_id}")
        @cache(ttl=60, stale_while_revalidate=30, stale_if_error=300, tags=["album:{album_id}"])
        async def album(album_id: int) -> Response:
            state.runs[f"album:{album_id}"] += 1
            await state._maybe_wait()
            if state.fail is not None:
                raise state.fail
            return JSONResponse(
                {"id": album_id, "version": state.version},
                status_code=state.status,
                headers=state.headers,
            )

        @app.put("/albums/{album_id}")
        @invalidates("album:{album_id}")
        async def update_album(album_id: int) -> dict[str, int]:
            state.version += 1
            return {"id": album_id}

        @app.get("/me")
        @cache(ttl=60)
        async def me(request: Request) -> dict[str, str | None]:
            state.runs["me"] += 1
            return {"authorization": request.headers.get("authorization")}

        @app.get("/catalog")
        @cache(ttl=60, public=True)
        async def catalog() -> dict[str, int]:
            state.runs["catalog"] += 1
            return {"version": state.version}

        @app.get("/big")
        @cache(ttl=60, max_entry_bytes=100)
        async def big() -> PlainTextResponse:
            state.runs["big"] += 1
            return PlainTextResponse("x" * 1000)

        @app.get("/stream")
        @cache(ttl=60, max_entry_bytes=100)
        async def stream() -> StreamingResponse:
            state.runs["stream"] += 1

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"y" * 50

            return StreamingResponse(chunks(), media_type="text/plain")

        @app.get("/search")
        @coalesce()
        async def search(q: str) -> dict[str, Any]:
            state.runs["search"] += 1
            await state._maybe_wait()
            return {"q": q, "version": state.version}

        @app.get("/tagged")
        @cache(store=False, etag=True, coalesce=False)
        async def tagged() -> dict[str, int]:
            state.runs["tagged"] += 1
            return {"version": state.version}

        @app.get("/plain")
        async def plain() -> dict[str, int]:
            state.runs["plain"] += 1
            return {"version": state.version}


@asynccontextmanager
async def client_for(
    counted: CountedApp,
    backend: CacheBackend,
    clock: ManualClock,
    **options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for ``counted.app`` behind a ``CacheMiddleware`` on ``backend``."""
    counted.app.add_middleware(CacheMiddleware, backend=backend, clock=clock, **options)
    transport = httpx.ASGITransport(app=counted.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client
