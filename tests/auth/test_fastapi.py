"""``require()`` on FastAPI routes: 401 vs 403, the principal as a parameter, OpenAPI schemes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bastion._clock import ManualClock
from bastion.auth import (
    ApiKeys,
    Authenticator,
    AuthRefused,
    NewApiKey,
    Principal,
    auth_problem,
    require,
)
from bastion.integrations.starlette import install_problem_handlers

pytestmark = pytest.mark.anyio


@pytest.fixture
def keys(manual_clock: ManualClock) -> ApiKeys:
    """API keys in memory."""
    return ApiKeys(clock=manual_clock)


def build(authenticator: Authenticator | None) -> FastAPI:
    """A FastAPI app without any middleware: require() authenticates by itself."""
    app = FastAPI()
    install_problem_handlers(app)
    app.add_exception_handler(AuthRefused, auth_problem)

    @app.get("/me")
    async def me(
        principal: Principal = require(authenticator=authenticator),  # noqa: B008 - FastAPI's idiom
    ) -> dict[str, Any]:
        return {"id": principal.id, "name": principal.name}

    @app.post("/items", dependencies=[require(["items:write"], authenticator=authenticator)])
    async def create() -> dict[str, bool]:
        return {"created": True}

    return app


@pytest.fixture
async def client(keys: ApiKeys) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app, with an explicit authenticator."""
    transport = httpx.ASGITransport(app=build(Authenticator(api_keys=keys)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_the_principal_is_handed_to_the_handler(
    client: httpx.AsyncClient, keys: ApiKeys
) -> None:
    """A valid key: the handler receives its Principal."""
    new = await keys.create("reader")
    response = await client.get("/me", headers={"authorization": f"Bearer {new.key}"})
    assert {"id": f"key:{new.record.id}", "name": "reader"} == response.json()


async def test_no_credentials_is_401_with_a_bare_challenge(client: httpx.AsyncClient) -> None:
    """Nothing sent: 401 problem, WWW-Authenticate without an error code."""
    response = await client.get("/me")
    assert (401, 'Bearer realm="api"', "application/problem+json") == (
        response.status_code,
        response.headers["www-authenticate"],
        response.headers["content-type"],
    )


async def test_invalid_credentials_are_401_invalid_token(client: httpx.AsyncClient) -> None:
    """A malformed key: 401 with error="invalid_token"."""
    response = await client.get("/me", headers={"x-api-key": "bst_nope"})
    assert 401 == response.status_code
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_missing_scope_is_403_not_401(
    client: httpx.AsyncClient, keys: ApiKeys, writer_and_reader: tuple[NewApiKey, NewApiKey]
) -> None:
    """The reader may not POST /items (403 insufficient_scope); the writer may (200)."""
    writer, reader = writer_and_reader
    refused = await client.post("/items", headers={"x-api-key": reader.key})
    allowed = await client.post("/items", headers={"x-api-key": writer.key})
    assert (403, ["items:write"], 200) == (
        refused.status_code,
        refused.json()["required_scopes"],
        allowed.status_code,
    )
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="items:write"' in refused.headers["www-authenticate"]


@pytest.fixture
async def writer_and_reader(keys: ApiKeys) -> tuple[NewApiKey, NewApiKey]:
    """A key with items:write and one without."""
    return (
        await keys.create("writer", scopes=["items:write"]),
        await keys.create("reader", scopes=["items:read"]),
    )


async def test_openapi_declares_both_schemes(keys: ApiKeys) -> None:
    """The docs' Authorize button knows the API key header and bearer tokens."""
    schemes = build(Authenticator(api_keys=keys)).openapi()["components"]["securitySchemes"]
    assert {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"},
    } == schemes


async def test_without_any_authenticator_the_route_fails_loudly() -> None:
    """No authenticator anywhere is a configuration error (a 500), never an open route."""
    transport = httpx.ASGITransport(app=build(None), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert 500 == (await client.get("/me")).status_code


def test_scopes_with_spaces_are_refused_when_declared() -> None:
    """require(["a b"]) is a ValueError at import time of the route, not a silent mismatch."""
    with pytest.raises(ValueError, match="without spaces"):
        require(["a b"])


async def test_require_finds_the_middlewares_authenticator(keys: ApiKeys) -> None:
    """With AuthMiddleware installed, require() needs no argument and reuses its principal."""
    from bastion.auth import AuthMiddleware

    app = build(None)
    app.add_middleware(AuthMiddleware, authenticator=Authenticator(api_keys=keys))
    new = await keys.create("writer", scopes=["items:write"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        allowed = await client.post("/items", headers={"x-api-key": new.key})
        anonymous = await client.post("/items")
    assert (200, 401) == (allowed.status_code, anonymous.status_code)
