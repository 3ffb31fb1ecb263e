"""``Bastion(app)`` with authentication: settings, the middleware at layer 8, the principal that
rate limits key on, ``bastion.require``, JWT from settings, and store outages on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
import jwt
import pytest
from fastapi import FastAPI

from bastion import Bastion
from bastion._clock import ManualClock
from bastion.auth import Principal
from bastion.context import current_context
from bastion.events import AuthStoreFailure
from bastion.exceptions import ConfigurationError
from bastion.settings import Settings
from bastion.testing import capture_events, lifespan

pytestmark = pytest.mark.anyio

SECRET = "a-shared-secret-of-at-least-32-bytes!"


class RedisServer(Protocol):
    """What these tests use of conftest's ``RedisServer``."""

    @property
    def url(self) -> str: ...
    def kill(self) -> None: ...
    def start(self) -> None: ...


def settings(**values: Any) -> Settings:
    """Settings from ``values`` only (no environment, no .env), logging left alone."""
    values.setdefault("logging", {"configure": False})
    values.setdefault("metrics", {"enabled": False})
    return Settings(_env_file=None, **values)


def catalog(
    bastion_settings: Settings, clock: ManualClock | None = None
) -> tuple[FastAPI, Bastion]:
    """A small FastAPI app behind Bastion: /me (anonymous allowed), /items writes required."""
    app = FastAPI()
    bastion = Bastion(app, bastion_settings, clock=clock or ManualClock())

    @app.get("/me")
    async def me() -> dict[str, Any]:
        return {"principal": current_context().principal}

    @app.post("/items", dependencies=[bastion.require(["items:write"]), bastion.limit("2/minute")])
    async def create() -> dict[str, bool]:
        return {"created": True}

    @app.get("/whoami")
    async def whoami(principal: Principal = bastion.require()) -> dict[str, Any]:  # noqa: B008
        return {"id": principal.id, "scopes": sorted(principal.scopes)}

    return app, bastion


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan), and a client of it from one IP address."""
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_bastion_require_works_without_the_middleware() -> None:
    """Default settings (middleware off): bastion.require authenticates with bastion's keys."""
    app, bastion = catalog(settings())
    new = await bastion.api_keys.create("ci", scopes=["items:read"])
    async with running(app) as client:
        anonymous = await client.get("/whoami")
        known = await client.get("/whoami", headers={"x-api-key": new.key})
    assert (401, {"id": f"key:{new.record.id}", "scopes": ["items:read"]}) == (
        anonymous.status_code,
        known.json(),
    )


async def test_the_middleware_sets_the_principal_for_the_whole_request() -> None:
    """Enabled: the handler's request context carries key:<id> on a route that requires nothing."""
    app, bastion = catalog(settings(auth={"enabled": True}))
    new = await bastion.api_keys.create("ci")
    async with running(app) as client:
        response = await client.get("/me", headers={"authorization": f"Bearer {new.key}"})
    assert {"principal": f"key:{new.record.id}"} == response.json()


async def test_rate_limits_key_on_the_principal_not_the_address() -> None:
    """Two keys from one IP each get their own 2/minute on POST /items."""
    app, bastion = catalog(settings(auth={"enabled": True}))
    first = await bastion.api_keys.create("a", scopes=["items:write"])
    second = await bastion.api_keys.create("b", scopes=["items:write"])
    async with running(app) as client:
        statuses = [
            (await client.post("/items", headers={"x-api-key": key.key})).status_code
            for key in (first, first, first, second, second)
        ]
    assert [200, 200, 429, 200, 200] == statuses


async def test_require_rules_from_settings_apply() -> None:
    """BASTION_AUTH__REQUIRE protects /me without touching its code."""
    app, _ = catalog(settings(auth={"enabled": True, "require": ["GET /me"]}))
    async with running(app) as client:
        response = await client.get("/me")
    assert (401, 'Bearer realm="api"') == (
        response.status_code,
        response.headers["www-authenticate"],
    )


async def test_jwt_bearer_tokens_from_settings_become_user_principals() -> None:
    """A shared secret, issuer and audience from settings: an HS256 token is user:<sub>."""
    clock = ManualClock(wall_start=1_700_000_000.0)
    auth = {
        "enabled": True,
        "jwt_secret": SECRET,
        "jwt_issuer": "https://idp.test/",
        "jwt_audience": ["catalog"],
    }
    app, _ = catalog(settings(auth=auth), clock)
    now = int(clock.time())
    claims = {"iss": "https://idp.test/", "aud": "catalog", "sub": "bob", "exp": now + 60}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    expired = jwt.encode({**claims, "exp": now - 60}, SECRET, algorithm="HS256")
    async with running(app) as client:
        good = await client.get("/me", headers={"authorization": f"Bearer {token}"})
        bad = await client.get("/me", headers={"authorization": f"Bearer {expired}"})
    assert ({"principal": "user:bob"}, 401) == (good.json(), bad.status_code)
    assert 'error_description="The token has expired."' in bad.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("auth", "variable"),
    [
        ({"enabled": True, "require": ["items"]}, "BASTION_AUTH__REQUIRE[0]"),
        ({"enabled": True, "exclude": ["nope"]}, "BASTION_AUTH__EXCLUDE"),
    ],
)
def test_invalid_rules_stop_bastion_naming_the_variable(
    auth: dict[str, Any], variable: str
) -> None:
    """A rule the middleware cannot compile fails Bastion(app), naming the variable."""
    with pytest.raises(ConfigurationError, match=variable.replace("[", r"\[")):
        catalog(settings(auth=auth))


# ------------------------------------------------------------------------------------ outages


@pytest.mark.parametrize("policy", ["fail_closed", "serve_stale"])
async def test_a_store_outage_is_503_or_stale_and_heals_by_itself(
    redis_server_factory: Callable[..., RedisServer], policy: str
) -> None:
    """Redis killed: fail_closed answers 503 (never 500); serve_stale keeps a key this worker
    verified recently, and still 503s a key it never saw. Redis back: keys work again."""
    server = redis_server_factory()
    clock = ManualClock()
    auth = {"enabled": True, "on_store_error": policy}
    stores = {"gate_base_delay_s": 5.0}
    app, bastion = catalog(settings(redis_url=server.url, auth=auth, stores=stores), clock)
    keys = bastion.api_keys
    seen, unseen = await keys.create("seen"), await keys.create("unseen")
    async with running(app) as client:

        async def status(key: str) -> int:
            return (await client.get("/me", headers={"x-api-key": key})).status_code

        before = await status(seen.key)
        clock.advance(2)  # past cache_s: the next verification must read the store
        server.kill()
        with capture_events(bastion.hooks) as events:
            during_seen = await status(seen.key)
            response = await client.get("/me", headers={"x-api-key": unseen.key})
        server.start()  # empty: the keys are gone with the old process
        clock.advance(5)  # the store's gate lets a probe through
        fresh = await keys.create("after")
        after = await status(fresh.key)
        gone = await status(seen.key)
    expected_seen = 200 if policy == "serve_stale" else 503
    assert (200, expected_seen, 503, 200, 401) == (
        before,
        during_seen,
        response.status_code,
        after,
        gone,
    )
    assert ("application/problem+json", "1") == (
        response.headers["content-type"],
        response.headers["retry-after"],
    )
    failures = [event for event in events if isinstance(event, AuthStoreFailure)]
    assert [(policy, policy == "serve_stale"), (policy, False)] == [
        (event.on_store_error, event.served_stale) for event in failures
    ]
