"""Rate limits installed by ``Bastion(app)``: from settings, per route with bastion.limit, and
declared on endpoints with @bastion.rate_limit."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.responses import PlainTextResponse, Response

from bastion import Bastion, Settings
from bastion.exceptions import ConfigurationError
from bastion.ratelimit import RateLimitMiddleware, rate_limit
from bastion.ratelimit._declare import declarations
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
async def test_without_configured_limits_no_layer_is_added(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No rate in the settings and no @rate_limit anywhere: the built stack has no rate-limit
    layer, and responses carry no headers."""
    monkeypatch.setattr(declarations, "count", 0)  # other tests' endpoints declared limits
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.get("/albums")

    assert "ratelimit" not in response.headers
    assert not any(isinstance(layer, RateLimitMiddleware) for layer in stack(app))


def stack(app: FastAPI) -> list[object]:
    """The layers of ``app``'s built middleware stack, outermost first."""
    layers: list[object] = []
    layer: object = app.middleware_stack
    while layer is not None and layer is not app.router:
        layers.append(layer)
        layer = getattr(layer, "app", None)
    return layers


def decorated_app(**overrides: object) -> FastAPI:
    """A FastAPI app under Bastion whose endpoints declare limits with @bastion.rate_limit."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, **overrides))  # type: ignore[arg-type]

    @app.get("/search")
    @bastion.rate_limit("2/minute")
    async def search() -> list[int]:
        """Declared below the route decorator."""
        return [1]

    @bastion.rate_limit("1/minute", name="exports", cost=1)
    @app.get("/export")
    async def export() -> Response:
        """Declared above the route decorator, answering with a Response of its own."""
        return PlainTextResponse("a,b\n")

    @app.get("/albums")
    async def albums() -> list[int]:
        """Declares nothing."""
        return [1, 2, 3]

    return app


@pytest.mark.anyio
async def test_a_limit_declared_with_the_decorator_applies_before_routing() -> None:
    """@bastion.rate_limit on an endpoint, above or below the route decorator: its quota with
    the RateLimit headers, named after the route unless named; other routes are not limited."""
    app = decorated_app()
    async with client_for(app) as client:
        searches = [await client.get("/search") for _ in range(3)]
        exports = [await client.get("/export") for _ in range(2)]
        albums = [await client.get("/albums") for _ in range(3)]

    assert [200, 200, 429] == [response.status_code for response in searches]
    assert [200, 429] == [response.status_code for response in exports]
    assert [200, 200, 200] == [response.status_code for response in albums]
    assert searches[0].headers["ratelimit-policy"].startswith('"GET /search";q=2;w=60')
    assert exports[0].headers["ratelimit-policy"].startswith('"exports";q=1;w=60')
    assert "ratelimit" in exports[0].headers  # a Response built by the endpoint gets them too
    assert "ratelimit" not in albums[0].headers


@pytest.mark.anyio
async def test_a_declared_limit_replaces_the_default_rate_but_not_the_global_one() -> None:
    """With a settings rate and global rate, a declaring route gets its own limit in place of
    the default rate, checked in one decision with the global one."""
    app = decorated_app(ratelimit={"rate": "100/minute", "global_rate": "50/minute"})
    async with client_for(app) as client:
        search = await client.get("/search")
        listed = await client.get("/albums")

    assert '"global";q=50' in search.headers["ratelimit-policy"]
    assert '"GET /search";q=2' in search.headers["ratelimit-policy"]
    assert '"default";q=100' in listed.headers["ratelimit-policy"]


def test_invalid_declarations_fail_at_decoration() -> None:
    """A negative cost, a shared limit without a name, a bad rate: ConfigurationError at once."""
    with pytest.raises(ConfigurationError):
        rate_limit("1/minute", cost=-1)
    with pytest.raises(ConfigurationError):
        rate_limit("1/minute", per_route=False)
    with pytest.raises(ConfigurationError):
        rate_limit("often")
