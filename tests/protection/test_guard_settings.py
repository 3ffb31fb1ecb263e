"""``BASTION_GUARD__*``: validated at startup, and what ``Bastion(app)`` installs by default."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from bastion import Bastion, Settings
from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from bastion.protection import GuardMiddleware
from bastion.settings import GuardSettings, load_settings
from bastion.testing import lifespan

pytestmark = pytest.mark.usefixtures("isolated_env")


def test_defaults() -> None:
    """Path checks, a 10 MiB limit, bans at 20 auth failures / 200 errors a minute, no HSTS."""
    settings = load_settings().guard
    assert (True, True, 10 * 1024 * 1024, True, 20, 200, 60.0, 0, [429]) == (
        settings.enabled,
        settings.check_paths,
        settings.max_body_bytes,
        settings.bans,
        settings.auth_failures,
        settings.client_errors,
        settings.window_s,
        settings.hsts_max_age_s,
        settings.ignored_statuses,
    )


def test_every_option_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists are comma-separated, body limits a JSON object."""
    for name, value in {
        "MAX_BODY_BYTES": "1048576",
        "BODY_LIMITS": "GET,POST /uploads/*=104857600, /reports/*=0",
        "ALLOW": "10.0.0.0/8, 2001:db8::/32",
        "DENY": "198.51.100.0/24",
        "AUTH_FAILURES": "5",
        "IGNORED_STATUSES": "404,429",
        "FRAME_OPTIONS": "off",
        "HSTS_MAX_AGE_S": "31536000",
        "ON_STORE_ERROR": "local_fallback",
    }.items():
        monkeypatch.setenv(f"BASTION_GUARD__{name}", value)
    settings = load_settings().guard
    assert (
        1_048_576,
        ["GET,POST /uploads/*=104857600", "/reports/*=0"],
        ["10.0.0.0/8", "2001:db8::/32"],
        ["198.51.100.0/24"],
        5,
        [404, 429],
        "off",
        31_536_000,
        "local_fallback",
    ) == (
        settings.max_body_bytes,
        settings.body_limits,
        settings.allow,
        settings.deny,
        settings.auth_failures,
        settings.ignored_statuses,
        settings.frame_options,
        settings.hsts_max_age_s,
        settings.on_store_error,
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DENY", "10.0.0.300", "BASTION_GUARD__DENY='10.0.0.300'"),
        ("ALLOW", "everyone", "BASTION_GUARD__ALLOW='everyone'"),
        ("MAX_BODY_BYTES", "-1", "BASTION_GUARD__MAX_BODY_BYTES"),
        ("IGNORED_STATUSES", "500", "BASTION_GUARD__IGNORED_STATUSES"),
        ("REFERRER_POLICY", "sometimes", "BASTION_GUARD__REFERRER_POLICY"),
        ("IPV6_PREFIX", "8", "BASTION_GUARD__IPV6_PREFIX"),
        ("BODY_LIMITS", '{"/x": -1}', "BASTION_GUARD__BODY_LIMITS"),
        ("BODY_LIMITS", "/x=lots", "BASTION_GUARD__BODY_LIMITS"),
        ("BODY_LIMITS", "{not json", "BASTION_GUARD__BODY_LIMITS"),
        ("MAX_BAN_S", "1", "BASTION_GUARD__MAX_BAN_S"),
        ("ON_STORE_ERROR", "fail_closed", "BASTION_GUARD__ON_STORE_ERROR"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """Startup fails with the variable's name."""
    monkeypatch.setenv(f"BASTION_GUARD__{name}", value)
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[")):
        load_settings()


def test_an_invalid_pattern_names_the_variable() -> None:
    """A body-limit pattern is checked when the options are built."""
    settings = GuardSettings(body_limits=["uploads/*=10"])
    with pytest.raises(ConfigurationError, match="BASTION_GUARD__BODY_LIMITS"):
        GuardMiddleware.options_from_settings(settings)


def test_body_limits_become_the_middlewares_mapping() -> None:
    """JSON object or comma-separated entries, in order, as bytes (0: no limit)."""
    settings = GuardSettings(body_limits='{"POST /uploads/*": 104857600, "/reports/*": 0}')
    assert {"POST /uploads/*": 104_857_600, "/reports/*": 0} == (
        GuardMiddleware.options_from_settings(settings)["body_limits"]
    )


def test_zero_thresholds_mean_no_bans() -> None:
    """Both thresholds at 0, or bans off, build no Bans at all."""
    assert (
        None
        is GuardMiddleware.options_from_settings(GuardSettings(auth_failures=0, client_errors=0))[
            "bans"
        ]
    )
    assert None is GuardMiddleware.options_from_settings(GuardSettings(bans=False))["bans"]


def guarded_fastapi(**guard: Any) -> tuple[FastAPI, Bastion]:
    """A FastAPI app under Bastion with guard settings ``guard``."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, guard=guard), clock=ManualClock())

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/login")
    async def login() -> None:
        raise HTTPException(401)

    return app, bastion


@pytest.mark.anyio
async def test_bastion_installs_the_guard_with_its_defaults() -> None:
    """Headers on every response, 413 over 10 MiB, 400 for traversal, from Bastion(app)."""
    app, _ = guarded_fastapi()
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            small = await client.post("/upload", content=b"x" * 1000)
            large = await client.post(
                "/upload", headers={"content-length": str(10 * 1024 * 1024 + 1)}, content=b""
            )
            traversal = await client.get("/static/%2e%2e/secrets")
    assert (200, "nosniff") == (small.status_code, small.headers["x-content-type-options"])
    assert (413, "nosniff") == (large.status_code, large.headers["x-content-type-options"])
    assert 400 == traversal.status_code
    assert traversal.json()["request_id"] == traversal.headers["x-request-id"]


@pytest.mark.anyio
async def test_bastion_bans_through_its_store_and_exposes_them() -> None:
    """bastion.bans is the guard's: it bans after the threshold and can unban."""
    app, bastion = guarded_fastapi(auth_failures=2)
    assert bastion.bans is not None
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            codes = [(await client.get("/login")).status_code for _ in range(3)]
            await bastion.bans.unban("203.0.113.7")
            codes.append((await client.get("/login")).status_code)
    assert [401, 401, 403, 401] == codes


@pytest.mark.anyio
async def test_the_guard_can_be_turned_off() -> None:
    """BASTION_GUARD__ENABLED=false installs no layer and no bans."""
    app, bastion = guarded_fastapi(enabled=False)
    assert None is bastion.bans
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/login")
    assert None is response.headers.get("x-content-type-options")
