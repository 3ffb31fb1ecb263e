"""An app served by ``uvicorn --workers 2`` in the response-cache tests, sharing one Redis.

``BASTION_REDIS_URL`` names the Redis; ``CACHE_APP_COUNTER`` is the Redis key the cached handler
increments on every run, so the test counts runs across both workers. Every response says which
worker sent it (``X-Worker-Pid``, added outside bastion's layers, so hits carry it too).
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from redis.asyncio import Redis

from bastion import Bastion
from bastion.types import ASGIApp, Message, Receive, Scope, Send

app = FastAPI()
bastion = Bastion(app)
runs = Redis.from_url(os.environ["BASTION_REDIS_URL"])
COUNTER = os.environ["CACHE_APP_COUNTER"]
PID = str(os.getpid()).encode()


@app.get("/cold")
@bastion.cache(ttl=60)
async def cold(key: str) -> dict[str, str]:
    """Counts its runs in Redis, then takes long enough for every concurrent request to wait."""
    await runs.incr(COUNTER)
    await asyncio.sleep(0.5)
    return {"key": key}


@app.get("/pid")
async def pid() -> dict[str, int]:
    """Which worker this connection reached."""
    return {"pid": os.getpid()}


@app.get("/same")
@bastion.cache(store=False, etag=True)
async def same() -> dict[str, str]:
    """The same content in every worker, never stored: each worker computes its own ETag."""
    return {"content": "identical in every worker"}


class WorkerHeader:
    """Adds ``X-Worker-Pid`` to every response (outermost, so cache hits get it too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-worker-pid", PID)]}
            await send(message)

        await self.app(scope, receive, send_with_pid)


app.add_middleware(WorkerHeader)
