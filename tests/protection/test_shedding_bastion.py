"""Load shedding installed by ``Bastion(app)``: settings, ops endpoints, metrics and validation."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion._clock import ManualClock
from bastion.auth import generate_key
from bastion.exceptions import ConfigurationError
from bastion.protection import AdaptiveLimit, Gradient2
from bastion.settings import load_settings
from tests.asgi import client_for
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


def shedding_app(**shedding: Any) -> tuple[FastAPI, Bastion, anyio.Event]:
    """A FastAPI app under Bastion whose ``/hold`` requests wait until the event is set."""
    app = FastAPI()
    settings = Settings(_env_file=None, logging={"configure": False}, shedding=shedding)
    bastion = Bastion(app, settings)
    release = anyio.Event()

    @app.get("/hold")
    async def hold() -> dict[str, int]:
        """Holds its permit until the test releases it."""
        await release.wait()
        return {"priority": 0}

    return app, bastion, release


async def test_a_full_service_sheds_but_still_answers_its_health_checks() -> None:
    """Limit 1, no queue: a second request is shed with 503; health and metrics still answer."""
    app, bastion, release = shedding_app(max_concurrent=1, queue_size=0)
    limiter = bastion.concurrency_limiter
    assert limiter is not None

    async with client_for(app) as client, anyio.create_task_group() as group:
        group.start_soon(client.get, "/hold")
        await wait_until(lambda: limiter.in_flight == 1)
        shed = await client.get("/hold")
        health = await client.get("/_bastion/health/ready")
        metrics = (await client.get("/_bastion/metrics")).text
        release.set()

    assert 503 == shed.status_code
    assert 1 <= int(shed.headers["retry-after"]) <= 2
    assert shed.headers["x-request-id"] == shed.json()["request_id"]
    assert 200 == health.status_code
    assert "bastion_concurrency_limit 1" in metrics
    assert "bastion_concurrency_in_flight 1" in metrics
    assert 'bastion_events_total{event="request_shed"} 1' in metrics


async def test_shedding_is_off_unless_configured() -> None:
    """Without BASTION_SHEDDING__MAX_CONCURRENT there is no limiter and no layer."""
    app, bastion, release = shedding_app()
    release.set()

    async with client_for(app) as client:
        responses = [await client.get("/hold") for _ in range(3)]

    assert None is bastion.concurrency_limiter
    assert [200, 200, 200] == [response.status_code for response in responses]


def test_an_adaptive_limit_is_built_from_settings() -> None:
    """BASTION_SHEDDING__ADAPTIVE=gradient2 starts at max_concurrent within min and max."""
    _, bastion, _ = shedding_app(max_concurrent=40, adaptive="gradient2", min_limit=8)
    limiter = bastion.concurrency_limiter

    assert limiter is not None
    assert isinstance(limiter.adaptive, AdaptiveLimit)
    assert isinstance(limiter.adaptive.algorithm, Gradient2)
    assert 40 == limiter.limit


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"BASTION_SHEDDING__MAX_CONCURRENT": "0"}, "BASTION_SHEDDING__MAX_CONCURRENT"),
        ({"BASTION_SHEDDING__QUEUE_TIMEOUT_S": "-1"}, "BASTION_SHEDDING__QUEUE_TIMEOUT_S"),
        ({"BASTION_SHEDDING__PRIORITIES": "{"}, "BASTION_SHEDDING__PRIORITIES"),
        ({"BASTION_SHEDDING__ADAPTIVE": "vegas"}, "BASTION_SHEDDING__ADAPTIVE"),
        (
            {
                "BASTION_SHEDDING__MAX_CONCURRENT": "2",
                "BASTION_SHEDDING__ADAPTIVE": "aimd",
                "BASTION_SHEDDING__MIN_LIMIT": "5",
            },
            "BASTION_SHEDDING__MIN_LIMIT",
        ),
    ],
)
def test_invalid_shedding_settings_name_the_variable(
    variables: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each invalid setting fails at startup with a message naming its variable."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=named):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BASTION_SHEDDING__PRIORITIES", '["/exports/*"]'),
        ("BASTION_SHEDDING__PRINCIPAL_PRIORITIES", '{"key:gold": "high"}'),
        ("BASTION_SHEDDING__EXCLUDE", "events"),
    ],
)
def test_rules_that_parse_but_mean_nothing_fail_bastion_at_startup(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule without a priority or a pattern without '/' names its variable when Bastion starts."""
    monkeypatch.setenv("BASTION_SHEDDING__MAX_CONCURRENT", "10")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        Bastion(FastAPI(), load_settings())


async def test_time_spent_queueing_counts_against_the_deadline() -> None:
    """Deadline inside shedding: a request that queued past its timeout is a 504, never run."""
    clock = ManualClock()
    app = FastAPI()
    settings = Settings(
        _env_file=None,
        logging={"configure": False},
        shedding={"max_concurrent": 1, "queue_timeout_s": 60},
        deadline={"default_s": 5},
    )
    bastion = Bastion(app, settings, clock=clock)
    release = anyio.Event()
    entered: list[str] = []

    @app.get("/hold/{name}")
    async def hold(name: str) -> None:
        """Holds its permit until the test releases it."""
        entered.append(name)
        await release.wait()

    limiter = bastion.concurrency_limiter
    assert limiter is not None
    statuses: dict[str, int] = {}

    async def get(client: httpx.AsyncClient, name: str) -> None:
        statuses[name] = (await client.get(f"/hold/{name}")).status_code

    async with client_for(app) as client, anyio.create_task_group() as group:
        group.start_soon(get, client, "first")
        await wait_until(lambda: entered == ["first"])
        group.start_soon(get, client, "queued")
        await wait_until(lambda: limiter.queued == 1)
        clock.advance(10)  # the queued request's 5 s are gone while it waits
        release.set()

    assert {"first": 200, "queued": 504} == statuses
    assert ["first"] == entered


async def queue_order(*, key_verified_before: bool) -> list[str]:
    """Order in which a queued anonymous request and a queued request with a key that has a
    principal priority are served, behind one request holding the only permit."""
    key, key_id = generate_key()
    app, bastion, release = shedding_app(
        max_concurrent=1,
        queue_size=10,
        queue_timeout_s=60,
        principal_priorities={f"key:{key_id}": 10},
    )
    await bastion.api_keys.add(key, name="partner")
    if key_verified_before:
        await bastion.api_keys.verify(key)  # what authenticating one of its requests does
    limiter = bastion.concurrency_limiter
    assert limiter is not None
    served: list[str] = []

    async with client_for(app) as client, anyio.create_task_group() as group:

        async def hold(name: str, headers: dict[str, str]) -> None:
            response = await client.get("/hold", headers=headers)
            served.append(f"{name} {response.status_code}")

        group.start_soon(hold, "first", {})
        await wait_until(lambda: limiter.in_flight == 1)
        group.start_soon(hold, "anonymous", {})
        await wait_until(lambda: limiter.queued == 1)
        group.start_soon(hold, "partner", {"x-api-key": key})
        await wait_until(lambda: limiter.queued == 2)
        release.set()
    return served


async def test_a_key_this_worker_verified_passes_anonymous_requests_in_the_queue() -> None:
    """Shedding runs before authentication, yet a key with a principal priority goes first
    once this worker has verified it: its cached record vouches for it, without a store call."""
    assert ["first 200", "partner 200", "anonymous 200"] == await queue_order(
        key_verified_before=True
    )


async def test_a_key_not_yet_verified_here_waits_its_turn() -> None:
    """Before admission nothing is looked up: a key this worker has not verified lately gets no
    priority (a forged or unknown key can never jump the queue)."""
    assert ["first 200", "anonymous 200", "partner 200"] == await queue_order(
        key_verified_before=False
    )
