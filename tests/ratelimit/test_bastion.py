"""Rate limits installed by ``Bastion(app)``: from settings, and per route with bastion.limit."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from tests.asgi import client_for


def make_app(**overrides: object) -> tuple[FastAPI, Bastion]:
    """A FastAPI app under Bastion with two routes, settings from ``overrides`` only."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, **overrides))  # type: ignore[arg-type]

    @app.get("/albums")
    async def albums() -> list[int]:
        """A route limited by settings only."""
        return [1, 2, 3]

    @app.post("/albums", dependencies=[bastion.limit("1/minute", name="writes")])
    async def create_album() -> dict[str, bool]:
        """A route with its own limit, declared on the route."""
        return {"created": True}

    return app, bastion


@pytest.mark.anyio
async def test_a_rate_from_settings_limits_every_route() -> None:
    """BASTION_RATELIMIT__RATE: the third request in a minute is a 429 problem with headers."""
    app, _ = make_app(ratelimit={"rate": "2/minute"})
    async with client_for(app) as client:
        responses = [await client.get("/albums") for _ in range(3)]

    assert [200, 200, 429] == [response.status_code for response in responses]
    refused = responses[2]
    assert "application/problem+json" == refused.headers["content-type"]
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-request-id"] == refused.json()["request_id"]
    assert "q=2" in responses[0].headers["ratelimit-policy"]
    assert ";r=1" in responses[0].headers["ratelimit"]


@pytest.mark.anyio
async def test_a_route_limit_declared_with_bastion_limit() -> None:
    """bastion.limit on a route refuses past its quota while other routes stay open."""
    app, _ = make_app()
    async with client_for(app) as client:
        created = await client.post("/albums")
        refused = await client.post("/albums")
        listed = await client.get("/albums")

    assert (200, 429, 200) == (created.status_code, refused.status_code, listed.status_code)
    assert "application/problem+json" == refused.headers["content-type"]
    assert '"writes"' in refused.headers["ratelimit-policy"]


@pytest.mark.anyio
async def test_without_configured_limits_no_layer_is_added() -> None:
    """No rate in the settings: requests pay for no rate-limit layer and carry no headers."""
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.get("/albums")

    assert "ratelimit" not in response.headers
    assert "RateLimitMiddleware" not in [entry.cls.__name__ for entry in app.user_middleware]  # type: ignore[attr-defined]
