"""The demo's API key: one key for the banner and every worker, from BASTION_DEMO_API_KEY."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from bastion.auth import generate_key
from bastion.cli._demo import banner
from bastion.demo.factory import create_app
from bastion.demo.keys import DEMO_KEY_VARIABLE
from bastion.exceptions import ConfigurationError
from bastion.settings import Settings
from bastion.testing import lifespan

if TYPE_CHECKING:
    from fastapi import FastAPI

pytestmark = pytest.mark.anyio


def test_the_banner_prints_the_demo_key(demo_app: FastAPI) -> None:
    """The banner shows the key the app will accept for writes."""
    text = banner(demo_app, demo_app.state.bastion, base_url="http://h:1", workers=1, reload=False)
    assert f"  API key    {demo_app.state.demo_api_key}  (X-API-Key; writes need it)" in text


async def test_the_key_from_the_environment_is_the_one_accepted(
    monkeypatch: pytest.MonkeyPatch, seeded_database_url: str
) -> None:
    """Two apps built with the same BASTION_DEMO_API_KEY (two workers) both accept it."""
    key, _ = generate_key()
    monkeypatch.setenv(DEMO_KEY_VARIABLE, key)
    apps = [create_app(Settings(_env_file=None, database_url=seeded_database_url)) for _ in "ab"]
    principals: list[tuple[int, str]] = []
    for app in apps:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post(
                    "/artists", json={"name": f"Band {len(principals)}"}, headers={"x-api-key": key}
                )
                principals.append((response.status_code, app.state.demo_api_key))
    assert [(201, key), (201, key)] == principals


def test_a_malformed_demo_key_stops_the_app(
    monkeypatch: pytest.MonkeyPatch, seeded_database_url: str
) -> None:
    """A BASTION_DEMO_API_KEY that is not a key fails create_app, naming the variable."""
    monkeypatch.setenv(DEMO_KEY_VARIABLE, "hunter2")
    with pytest.raises(ConfigurationError, match=DEMO_KEY_VARIABLE):
        create_app(Settings(_env_file=None, database_url=seeded_database_url))
