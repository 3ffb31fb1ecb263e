"""The demo's ``/slow`` endpoint: its route timeout and the load shedding in front of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from bastion.demo.factory import DEMO_SHEDDING, create_app
from bastion.demo.routers.slow import SLOW_TIMEOUT_S
from bastion.settings import Settings
from tests.asgi import client_for
from tests.waiting import wait_until

if TYPE_CHECKING:
    from fastapi import FastAPI

pytestmark = pytest.mark.anyio


async def test_a_quick_sleep_answers_with_the_time_left(client: httpx.AsyncClient) -> None:
    """Within its timeout, /slow answers and reports how much of the deadline was left."""
    response = await client.get("/slow", params={"seconds": 0.01})

    assert 200 == response.status_code
    body = response.json()
    assert 0.01 == body["slept_s"]
    assert 0 < body["time_left_s"] < SLOW_TIMEOUT_S


async def test_a_sleep_past_the_route_timeout_is_a_504_problem(client: httpx.AsyncClient) -> None:
    """/slow?seconds=5 is cancelled at the route's 2-second deadline: 504 problem+json."""
    response = await client.get("/slow", params={"seconds": 5}, timeout=30)

    assert (504, "application/problem+json") == (
        response.status_code,
        response.headers["content-type"],
    )
    assert SLOW_TIMEOUT_S == response.json()["timeout_s"]


async def test_the_demo_sheds_load_by_default(demo_app: FastAPI) -> None:
    """Without BASTION_SHEDDING__* the demo limits concurrency with its own defaults."""
    limiter = demo_app.state.bastion.concurrency_limiter

    assert DEMO_SHEDDING["max_concurrent"] == limiter.limit


async def test_a_burst_beyond_the_limit_is_shed_with_retry_after(
    seeded_database_url: str,
) -> None:
    """With one permit and no queue, a second /slow while the first sleeps gets 503."""
    app = create_app(
        Settings(
            _env_file=None,
            database_url=seeded_database_url,
            shedding={"max_concurrent": 1, "queue_size": 0},
        )
    )
    limiter = app.state.bastion.concurrency_limiter
    async with client_for(app) as client, anyio.create_task_group() as group:
        group.start_soon(client.get, "/slow?seconds=1.5")
        await wait_until(lambda: limiter.in_flight == 1)
        shed = await client.get("/slow", params={"seconds": 0})

    assert 503 == shed.status_code
    assert 1 <= int(shed.headers["retry-after"]) <= 2
