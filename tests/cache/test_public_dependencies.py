"""A public cached route with FastAPI dependencies is flagged: a hit never runs them."""

from __future__ import annotations

import logging

import pytest
from fastapi import Depends, FastAPI

from bastion.cache import CacheMiddleware, cache
from tests.asgi import client_for

pytestmark = pytest.mark.anyio


async def check_caller() -> None:
    """Stands for an authorization check."""


def app_with(*, public: bool, dependencies: bool) -> FastAPI:
    """A FastAPI app with one cached GET route, public or not, with or without a dependency."""
    app = FastAPI()

    @app.get("/report", dependencies=[Depends(check_caller)] if dependencies else [])
    @cache(ttl=60, public=public)
    async def report() -> dict[str, int]:
        return {"total": 1}

    app.add_middleware(CacheMiddleware)
    return app


@pytest.mark.parametrize(
    ("public", "dependencies", "warned"),
    [(True, True, True), (True, False, False), (False, True, False)],
)
async def test_a_public_route_with_dependencies_is_warned_about(
    caplog: pytest.LogCaptureFixture, public: bool, dependencies: bool, warned: bool
) -> None:
    """Only public=True with dependencies logs the warning, naming the dependency."""
    caplog.set_level(logging.WARNING, logger="bastion.cache")
    async with client_for(app_with(public=public, dependencies=dependencies)) as client:
        first = await client.get("/report")
        second = await client.get("/report")
    messages = [r.getMessage() for r in caplog.records if r.name == "bastion.cache"]
    assert (200, 200) == (first.status_code, second.status_code)
    assert warned == any("check_caller" in message for message in messages), messages
