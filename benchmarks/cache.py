"""Response-cache hits on Redis: one round trip each, counted, and what a hit costs.

``uv run --group bench python -m benchmarks.cache [--redis-url URL] [--hits N] [--no-write]``

The in-process ratios (a memory hit against a fastapi-cache2 hit, and a hit with Bastion's full
stack against bare FastAPI) are measured by the main harness: ``python -m benchmarks.run --mode
inprocess --group cache`` (see README.md, *Response cache*). This command checks the third
promise of issue 5, **a Redis hit costs one round trip**, which needs a Redis and its counters:

- The app is the ``cache-layer`` row of ``apps.py`` (FastAPI behind ``CacheMiddleware`` with
  ``@cache(ttl=60)``) on a ``RedisCacheBackend`` over ``RedisStore.from_url(url)`` under a fresh
  key prefix, driven in-process like the harness drives it (no sockets between client and app).
- One request stores the response; then ``--hits`` sequential requests must all be hits
  (``Cache-Status: bastion; hit``, the expected body).
- Round trips are counted on the client's sockets (every ``send_packed_command`` of redis-py's
  connections) and checked against the server's ``INFO commandstats`` deltas: ``EVALSHA`` per
  hit, and the commands the script runs for it (``HGETALL`` of the entry, a ``GET`` per tag).
- The mean µs per hit on Redis and on the memory backend are printed for orientation only: they
  are sequential, not interleaved, so only the harness's paired rows are comparable.

Without ``--redis-url`` a throw-away ``redis-server`` is started (free port, no persistence)
and stopped at the end. Exit status 1 when a hit took more than one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.apps import APPS
from benchmarks.ratelimit import _throwaway_redis
from benchmarks.report import write_report
from benchmarks.scenarios import SCENARIOS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.types import ASGIApp, Message

__all__ = ["main", "render_markdown"]

RESULTS = Path(__file__).resolve().parent / "results"


async def _request(app: ASGIApp, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through ``app``; its status, headers and body."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app({**scope, "headers": list(scope["headers"])}, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def _scope() -> dict[str, Any]:
    scenario = SCENARIOS["item"]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": scenario.method,
        "scheme": "http",
        "path": scenario.path,
        "raw_path": scenario.path.encode(),
        "root_path": "",
        "query_string": scenario.query_string.encode(),
        "headers": [(b"host", b"bench"), *((k.encode(), v.encode()) for k, v in scenario.headers)],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def _app(backend: Any) -> ASGIApp:
    """The ``cache-layer`` row's app, on ``backend``."""
    from bastion.cache import CacheMiddleware

    app = APPS["cache-layer"].factory()
    app.user_middleware.clear()  # type: ignore[attr-defined]
    app.add_middleware(CacheMiddleware, backend=backend)  # type: ignore[attr-defined]
    return app


async def _hits(app: ASGIApp, count: int) -> float:
    """Serve one miss, then ``count`` hits; the mean µs per hit. Every hit is checked."""
    scope = _scope()
    expected = SCENARIOS["item"].expected_json

    status, _, body = await _request(app, scope)
    if status != 200 or json.loads(body) != expected:
        raise SystemExit(f"the first response was wrong: {status} {body!r}")
    started = time.perf_counter_ns()
    for _ in range(count):
        status, headers, body = await _request(app, scope)
        if status != 200 or headers.get(b"cache-status") != b"bastion; hit":
            raise SystemExit(f"a request was not a hit: {status} {headers}")
    return (time.perf_counter_ns() - started) / count / 1000


def _calls(info: dict[str, Any]) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if name.startswith("cmdstat_")
    }


async def _measure(url: str, hits: int) -> dict[str, Any]:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

    from bastion.cache import MemoryCacheBackend, RedisCacheBackend
    from bastion.stores.redis import RedisStore

    prefix = f"bastion-bench-{uuid.uuid4().hex}"
    store = RedisStore.from_url(url, prefix=prefix)
    admin = Redis.from_url(url)
    writes = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal writes
        writes += 1
        await original(self, command, check_health)

    try:
        app = _app(RedisCacheBackend(store.with_namespace("cache")))
        await _hits(app, 10)  # the script is loaded, the pool has its connection
        before = _calls(await admin.info("commandstats"))
        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        try:
            redis_us = await _hits(app, hits)
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        after = _calls(await admin.info("commandstats"))
        memory_us = await _hits(_app(MemoryCacheBackend()), hits)
        version = (await admin.info("server"))["redis_version"]
    finally:
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()
        await store.aclose()
    # The counted _hits call checks one response first (a hit already: the entry exists).
    requests = hits + 1
    delta = {
        name: after.get(name, 0) - before.get(name, 0)
        for name in after
        if name != "info" and after.get(name, 0) != before.get(name, 0)
    }
    return {
        "requests": requests,
        "socket_writes": writes,
        "round_trips_per_hit": writes / requests,
        "commandstats": delta,
        "evalsha_per_hit": delta.get("evalsha", 0) / requests,
        "redis_hit_us": redis_us,
        "memory_hit_us": memory_us,
        "redis_version": version,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    m = report["measured"]
    verdict = "PASS" if m["round_trips_per_hit"] == 1 else "FAIL"
    per_hit = ", ".join(
        f"{name} {count / m['requests']:.2f}" for name, count in sorted(m["commandstats"].items())
    )
    trips = (
        f"- **{verdict}**: a Redis hit costs one round trip: {m['socket_writes']} socket "
        f"writes for {m['requests']} hits = **{m['round_trips_per_hit']:.2f} per hit**; "
        f"`INFO commandstats` per hit: {per_hit} (the script's own `HGETALL`/`GET` count "
        "there too: server work, not round trips)."
    )
    timing = (
        f"- Mean µs per hit, sequential, for orientation only: Redis {m['redis_hit_us']:.1f}, "
        f"memory {m['memory_hit_us']:.1f}. The paired in-process ratios come from "
        "`python -m benchmarks.run --mode inprocess --group cache`."
    )
    header = f"- Started {report['started']}; Redis {m['redis_version']}"
    return "\n".join(
        [
            f"# Benchmark `{report['name']}`",
            "",
            f"- Command: `{report['command']}`",
            header,
            "",
            "## Response-cache hits on Redis",
            "",
            trips,
            timing,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; exit status 1 when a hit took more than one round trip."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__)
    parser.add_argument("--redis-url", help="a Redis nobody else uses (its counters are read)")
    parser.add_argument("--hits", type=int, default=2000, help="hits counted (default 2000)")
    parser.add_argument("--name", help="report name (default: cache-redis-YYYYMMDD)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    if args.redis_url:
        measured = asyncio.run(_measure(args.redis_url, args.hits))
    else:
        with _throwaway_redis(None) as local:
            measured = asyncio.run(_measure(local.url, args.hits))
    report = {
        "name": args.name or f"cache-redis-{started:%Y%m%d}",
        "command": "python -m benchmarks.cache " + " ".join(argv or sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "measured": measured,
    }
    print(render_markdown(report))
    if not args.no_write:
        write_report(report, RESULTS, render=render_markdown)
    return 0 if measured["round_trips_per_hit"] == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
