"""Security headers: added by setting, HSTS only over TLS, never replacing the app's own."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.exceptions import ConfigurationError
from bastion.protection import GuardMiddleware, SecurityHeaders
from tests.protection.conftest import client_for, guarded_app

pytestmark = pytest.mark.anyio

HSTS = SecurityHeaders(hsts_max_age_s=31_536_000, hsts_include_subdomains=True)


async def test_defaults_add_nosniff_frame_options_and_referrer_policy() -> None:
    """Every response gets the three defaults and no HSTS or CSP."""
    async with client_for(guarded_app()) as client:
        headers = (await client.get("/ok")).headers
    assert "nosniff" == headers["x-content-type-options"]
    assert "DENY" == headers["x-frame-options"]
    assert "strict-origin-when-cross-origin" == headers["referrer-policy"]
    assert None is headers.get("strict-transport-security")
    assert None is headers.get("content-security-policy")


async def test_hsts_is_sent_over_tls_only() -> None:
    """scope scheme https gets Strict-Transport-Security; plain http never does."""
    app = guarded_app(security_headers=HSTS)
    async with client_for(app, scheme="https") as client:
        secure = (await client.get("/ok")).headers
    async with client_for(app, scheme="http") as client:
        plain = (await client.get("/ok")).headers
    assert "max-age=31536000; includeSubDomains" == secure["strict-transport-security"]
    assert None is plain.get("strict-transport-security")


async def test_hsts_believes_x_forwarded_proto_from_trusted_proxies_only() -> None:
    """Behind a TLS-terminating proxy the forwarded scheme counts, from nobody else."""
    app = guarded_app(security_headers=HSTS, trusted_proxies=["10.0.0.0/8"])
    forwarded = {"x-forwarded-proto": "https"}
    async with client_for(app, "10.1.2.3") as client:
        proxied = (await client.get("/ok", headers=forwarded)).headers
        plain = (await client.get("/ok", headers={"x-forwarded-proto": "http"})).headers
    async with client_for(app) as client:
        spoofed = (await client.get("/ok", headers=forwarded)).headers
    assert "strict-transport-security" in proxied
    assert "strict-transport-security" not in plain
    assert "strict-transport-security" not in spoofed


async def test_a_header_the_app_set_is_never_replaced() -> None:
    """A route that sets its own X-Frame-Options or CSP keeps it."""

    async def framed(request: Request) -> Response:
        return PlainTextResponse(
            "ok",
            headers={"X-Frame-Options": "SAMEORIGIN", "Content-Security-Policy": "default-src *"},
        )

    app = Starlette(routes=[Route("/framed", framed)])
    app.add_middleware(
        GuardMiddleware,
        security_headers=SecurityHeaders(content_security_policy="default-src 'none'"),
    )
    async with client_for(app) as client:
        response = await client.get("/framed")
    assert ["SAMEORIGIN"] == response.headers.get_list("x-frame-options")
    assert ["default-src *"] == response.headers.get_list("content-security-policy")
    assert "nosniff" == response.headers["x-content-type-options"]


async def test_the_guards_own_refusals_carry_the_headers() -> None:
    """A 413 from the guard is a response like any other."""
    app = guarded_app(max_body_bytes=1, security_headers=HSTS)
    async with client_for(app, scheme="https") as client:
        response = await client.post("/echo", content=b"too long")
    assert 413 == response.status_code
    assert "nosniff" == response.headers["x-content-type-options"]
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


async def test_every_option_and_extra_headers() -> None:
    """CSP, preload, custom referrer policy, extra headers; None and False send nothing."""
    headers = SecurityHeaders(
        content_type_options=False,
        frame_options=None,
        referrer_policy="no-referrer",
        content_security_policy="default-src 'none'; frame-ancestors 'none'",
        hsts_max_age_s=63_072_000,
        hsts_include_subdomains=True,
        hsts_preload=True,
        extra={"Permissions-Policy": "geolocation=()"},
    )
    async with client_for(guarded_app(security_headers=headers), scheme="https") as client:
        sent = (await client.get("/ok")).headers
    assert None is sent.get("x-content-type-options")
    assert None is sent.get("x-frame-options")
    assert "no-referrer" == sent["referrer-policy"]
    assert "default-src 'none'; frame-ancestors 'none'" == sent["content-security-policy"]
    assert "max-age=63072000; includeSubDomains; preload" == sent["strict-transport-security"]
    assert "geolocation=()" == sent["permissions-policy"]


async def test_no_security_headers_when_disabled() -> None:
    """security_headers=None adds nothing."""
    async with client_for(guarded_app(security_headers=None)) as client:
        headers = (await client.get("/ok")).headers
    assert None is headers.get("x-content-type-options")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"referrer_policy": "sometimes"}, "referrer_policy"),
        ({"frame_options": "ALLOW-FROM x"}, "frame_options"),
        ({"content_security_policy": "a\r\nSet-Cookie: x=1"}, "line break"),
        ({"extra": {"Bad Name": "x"}}, "header name"),
        ({"extra": {"X-Frame-Options": "DENY"}}, "twice"),
        ({"hsts_max_age_s": -1}, "hsts_max_age_s"),
    ],
)
def test_invalid_headers_are_refused(options: dict[str, object], message: str) -> None:
    """Bad values fail when the middleware is built, not on a request."""
    with pytest.raises(ConfigurationError, match=message):
        GuardMiddleware(guarded_app(), security_headers=SecurityHeaders(**options))  # type: ignore[arg-type]
