"""``BASTION_RATELIMIT__*``: read from the environment, turned into middleware options."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion.exceptions import ConfigurationError
from bastion.ratelimit import Limit, RateLimiter, RateLimitMiddleware, Rule
from bastion.settings import RateLimitSettings, load_settings
from tests.ratelimit.headers import parse_list

pytestmark = pytest.mark.usefixtures("isolated_env")


def test_defaults_limit_nothing_and_fail_open() -> None:
    """Out of the box: no default rate, sliding windows, headers on, fail open, one worker."""
    settings = load_settings().ratelimit
    assert (None, None, [], "sliding_window", "fail_open", 1, True) == (
        settings.rate,
        settings.global_rate,
        settings.rules,
        settings.algorithm,
        settings.on_store_error,
        settings.expected_workers,
        settings.headers,
    )


def test_every_option_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rates, JSON rules (shorthand strings and objects), exclusions and policies."""
    monkeypatch.setenv("BASTION_RATELIMIT__RATE", "100/minute")
    monkeypatch.setenv("BASTION_RATELIMIT__GLOBAL_RATE", "5000/hour")
    monkeypatch.setenv(
        "BASTION_RATELIMIT__RULES",
        '["/search/*=10/second;300/hour", {"path": "POST /upload", "rate": "5/minute", "cost": 2}]',
    )
    monkeypatch.setenv("BASTION_RATELIMIT__EXCLUDE", "/docs*, /static/*")
    monkeypatch.setenv("BASTION_RATELIMIT__ALGORITHM", "gcra")
    monkeypatch.setenv("BASTION_RATELIMIT__ON_STORE_ERROR", "local_fallback")
    monkeypatch.setenv("BASTION_RATELIMIT__EXPECTED_WORKERS", "8")
    settings = load_settings().ratelimit
    assert (
        RateLimitSettings(
            rate="100/minute",
            global_rate="5000/hour",
            rules=[
                "/search/*=10/second;300/hour",
                {"path": "POST /upload", "rate": "5/minute", "cost": 2},
            ],
            exclude=["/docs*", "/static/*"],
            algorithm="gcra",
            on_store_error="local_fallback",
            expected_workers=8,
        )
        == settings
    )


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("BASTION_RATELIMIT__ON_STORE_ERROR", "ignore", "'fail_open', 'fail_closed' or"),
        ("BASTION_RATELIMIT__ALGORITHM", "leaky_bucket", "'fixed_window', 'sliding_window'"),
        ("BASTION_RATELIMIT__EXPECTED_WORKERS", "0", "greater than 0"),
        ("BASTION_RATELIMIT__RULES", "/search=1/s", "must be a JSON list"),
        ("BASTION_RATELIMIT__RATES", "100/minute", "did you mean BASTION_RATELIMIT__RATE"),
    ],
)
def test_invalid_variables_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    """load_settings names the variable and what would be accepted."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert (True, True) == (variable in message, fragment in message)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (RateLimitSettings(rate="100/fortnight"), "BASTION_RATELIMIT__RATE='100/fortnight'"),
        (RateLimitSettings(global_rate="lots"), "BASTION_RATELIMIT__GLOBAL_RATE='lots'"),
        (RateLimitSettings(rules=["/a=1/s", "/b"]), "BASTION_RATELIMIT__RULES[1]: invalid rule"),
        (
            RateLimitSettings(rules=[{"path": "/a", "rate": "1/s burst 2"}]),
            "BASTION_RATELIMIT__RULES[0]: limit '/a': a burst needs algorithm='gcra'",
        ),
        (RateLimitSettings(exclude=["docs"]), "BASTION_RATELIMIT__EXCLUDE: invalid pattern"),
    ],
)
def test_invalid_rates_fail_at_startup_naming_the_variable(
    settings: RateLimitSettings, fragment: str
) -> None:
    """Rates are checked when the middleware is configured; the error names the variable."""
    with pytest.raises(ConfigurationError) as caught:
        RateLimitMiddleware.options_from_settings(settings)
    assert fragment in str(caught.value)


def test_options_from_settings_build_the_limiter_and_the_rules() -> None:
    """The options hold a limiter with the settings' policy and compiled limits."""
    settings = RateLimitSettings(
        rate="10/minute",
        global_rate="100/hour",
        rules=["/search=1/second"],
        algorithm="fixed_window",
        on_store_error="fail_closed",
        headers=False,
    )
    options = RateLimitMiddleware.options_from_settings(settings)
    limiter = options.pop("limiter")
    assert (RateLimiter, "fail_closed") == (type(limiter), limiter.on_store_error)
    assert {
        "algorithm": "fixed_window",
        "headers": False,
        "rate": Limit("10/minute", name="default", algorithm="fixed_window"),
        "global_rate": Limit("100/hour", name="global", algorithm="fixed_window", per_route=False),
        "rules": [Rule(path="/search", rate="1/second")],
        "exclude": [],
    } == options


@pytest.mark.anyio
async def test_a_middleware_built_from_settings_limits_requests() -> None:
    """End to end: settings → options → add_middleware → 429 on the rule's route."""

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    settings = RateLimitSettings(rate="5/minute", rules=["/x=1/minute"])
    options = RateLimitMiddleware.options_from_settings(settings, clock=ManualClock(864_000.0))
    app = Starlette(routes=[Route("/x", ok), Route("/y", ok)])
    app.add_middleware(RateLimitMiddleware, **options)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        x = [(await http.get("/x")).status_code for _ in range(2)]
        y = await http.get("/y")
    assert ([200, 429], [("default", {"q": 5, "w": 60})]) == (
        x,
        parse_list(y.headers["ratelimit-policy"]),
    )
