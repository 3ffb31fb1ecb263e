"""``BASTION_AUTH__*``: defaults, parsing from the environment, and errors naming the variable."""

from __future__ import annotations

import pytest

from bastion.exceptions import ConfigurationError
from bastion.settings import AuthSettings, load_settings


@pytest.fixture(autouse=True)
def isolated_env(isolated_env: None) -> None:
    """No BASTION_* settings from the developer's shell or .env."""


def env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """Set ``BASTION_AUTH__<NAME>`` variables."""
    for name, value in variables.items():
        monkeypatch.setenv(f"BASTION_AUTH__{name.upper()}", value)


def test_defaults_are_off_and_safe() -> None:
    """Middleware off, fail closed, a one-second cache, no JWT."""
    auth = AuthSettings()
    assert (False, "fail_closed", 1.0, None, "X-API-Key") == (
        auth.enabled,
        auth.on_store_error,
        auth.cache_s,
        auth.jwt_jwks_url,
        auth.api_key_header,
    )


def test_the_environment_configures_jwks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists are comma-separated, rules a JSON list."""
    env(
        monkeypatch,
        enabled="true",
        jwt_jwks_url="https://idp.example/.well-known/jwks.json",
        jwt_issuer="https://idp.example/",
        jwt_audience="catalog, admin",
        jwt_algorithms="RS256,ES384",
        require='["/admin/*=admin", "POST /items=items:write"]',
    )
    auth = load_settings().auth
    assert (
        ["catalog", "admin"],
        ["RS256", "ES384"],
        ["/admin/*=admin", "POST /items=items:write"],
    ) == (
        auth.jwt_audience,
        auth.jwt_algorithms,
        auth.require,
    )


JWKS = {"jwt_jwks_url": "https://idp/j", "jwt_issuer": "i", "jwt_audience": "a"}


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"cache_s": "5"}, "BASTION_AUTH__CACHE_S='5': Input should be less than or equal to 1"),
        (
            {"jwt_jwks_url": "ftp://idp/jwks"},
            "BASTION_AUTH__JWT_JWKS_URL='ftp://idp/jwks': must be an http(s) URL",
        ),
        ({"jwt_jwks_url": "http://idp.example/jwks"}, "must use https"),
        ({"jwt_secret": "short"}, "BASTION_AUTH__JWT_SECRET must be at least 32 bytes"),
        ({**JWKS, "jwt_issuer": ""}, "BASTION_AUTH__JWT_ISSUER must be set"),
        ({**JWKS, "jwt_audience": ""}, "BASTION_AUTH__JWT_AUDIENCE must be set"),
        (
            {**JWKS, "jwt_algorithms": "HS256"},
            "BASTION_AUTH__JWT_ALGORITHMS: 'HS256' is not accepted with a JWKS",
        ),
        ({**JWKS, "jwt_algorithms": "none"}, "BASTION_AUTH__JWT_ALGORITHMS: 'none' is not"),
        ({**JWKS, "jwt_secret": "s" * 32}, "not both"),
        ({"require": '["/admin"]'}, "BASTION_AUTH__REQUIRE needs BASTION_AUTH__ENABLED=true"),
        ({"require": "/admin"}, "BASTION_AUTH__REQUIRE='/admin': must be a JSON list"),
        ({"on_store_error": "fail_open"}, "BASTION_AUTH__ON_STORE_ERROR='fail_open'"),
        ({"api_key_prefix": "My_Prefix"}, "BASTION_AUTH__API_KEY_PREFIX='My_Prefix'"),
    ],
)
def test_invalid_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    """Each mistake fails load_settings with a line naming the variable and the problem."""
    env(monkeypatch, **variables)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert message in str(caught.value)


def test_the_jwt_secret_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared secret never appears in repr, the masked settings, or an error about it."""
    secret = "s3cr3t-" * 6
    env(monkeypatch, jwt_secret=secret, jwt_issuer="i", jwt_audience="a")
    settings = load_settings()
    monkeypatch.setenv("BASTION_AUTH__JWT_SECRET", "too-short-secret")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert secret not in repr(settings)
    assert secret not in str(settings.masked())
    assert "too-short-secret" not in str(caught.value)
