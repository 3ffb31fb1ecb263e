"""One worker process of the two-process exactness test (run with ``python -m``, not collected).

It builds a Starlette app limited through Redis, prints ``ready``, waits for a line on standard
input (so both workers start together), sends its requests in concurrent waves in-process, and
prints one JSON line per response: ``[status, RateLimit header or null]``.

Configured by the environment: ``REDIS_URL``, ``PREFIX``, ``RATE``, ``ALGORITHM``, ``REQUESTS``
and ``FROZEN_TIME`` (wall-clock seconds to use instead of the Redis server's time, or empty).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import cast

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion.ratelimit import Algorithm, RateLimiter, RateLimitMiddleware
from bastion.stores.redis import RedisStore
from tests.workers import redis_barrier


async def ok(request: Request) -> Response:
    """The limited route."""
    return PlainTextResponse("ok")


async def main() -> None:
    """Serve the configured number of requests once the parent says go."""
    environ = os.environ
    frozen = environ.get("FROZEN_TIME")
    clock = ManualClock(0.0, wall_start=float(frozen)) if frozen else None
    store = RedisStore.from_url(environ["REDIS_URL"], prefix=environ["PREFIX"])
    limiter = RateLimiter(store, clock=clock)
    app = Starlette(routes=[Route("/search", ok)])
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        rate=environ["RATE"],
        algorithm=cast("Algorithm", environ["ALGORITHM"]),
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await store.ping()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        # One process could spend the whole quota before the other starts.
        await redis_barrier(store.client, f"{environ['PREFIX']}:barrier")
        # In waves of 10 concurrent requests: the decisions of one wave leave in one pipeline
        # (the store batches the commands of an event-loop turn), so waves are what the two
        # processes interleave at the server. One gather of all 150 would be one pipeline, and
        # Redis could run it whole before the other process's first command arrived.
        responses = []
        for _ in range(0, int(environ["REQUESTS"]), 10):
            responses += await asyncio.gather(*(client.get("/search") for _ in range(10)))
    await store.aclose()
    for response in responses:
        line = [response.status_code, response.headers.get("ratelimit")]
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
