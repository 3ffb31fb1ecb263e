"""Two uvicorn processes sharing Redis: a client banned through one is refused by the other."""

from __future__ import annotations

import os
import time
import uuid
from contextlib import ExitStack

import httpx
import pytest

from tests.servers import serve

pytestmark = [pytest.mark.redis, pytest.mark.slow]

APP = "tests.protection.guard_worker:app"
PROPAGATION_BUDGET_S = 1.0


def wait_listening(url: str) -> None:
    """Wait until the server at ``url`` follows the bans channel."""
    deadline = time.monotonic() + 10
    while not httpx.get(f"{url}/listening").json()["listening"]:
        assert time.monotonic() < deadline, f"{url} never subscribed to the bans"
        time.sleep(0.02)


def test_a_ban_through_one_worker_is_enforced_by_the_other(redis_url: str) -> None:
    """Three 401s at worker A ban the client; worker B refuses its clean requests at once."""
    env = {
        **os.environ,
        "BASTION_REDIS_URL": redis_url,
        "BASTION_STORES__KEY_PREFIX": f"bastion-test-{uuid.uuid4().hex}",
        "BASTION_GUARD__AUTH_FAILURES": "3",
        "BASTION_GUARD__BAN_S": "30",
        # Both servers see the test as 127.0.0.1, which is exempt unless told otherwise.
        "BASTION_GUARD__BAN_PRIVATE_NETWORKS": "true",
        "BASTION_LOGGING__ACCESS_LOG": "false",
        "BASTION_METRICS__ENABLED": "false",
    }
    with ExitStack() as stack:
        worker_a, process_a = stack.enter_context(serve(APP, env=env))
        worker_b, process_b = stack.enter_context(serve(APP, env=env))
        wait_listening(worker_a)
        wait_listening(worker_b)
        assert process_a.pid != process_b.pid
        assert 200 == httpx.get(f"{worker_b}/ok").status_code
        assert [401, 401, 401] == [httpx.get(f"{worker_a}/login").status_code for _ in range(3)]
        started = time.monotonic()
        while (refused := httpx.get(f"{worker_b}/ok")).status_code == 200:
            assert time.monotonic() - started < PROPAGATION_BUDGET_S, "worker B never learned"
            time.sleep(0.005)
        assert 403 == refused.status_code
        assert 0 < int(refused.headers["retry-after"]) <= 30
        assert "application/problem+json" == refused.headers["content-type"]
        assert 403 == httpx.get(f"{worker_a}/ok").status_code
