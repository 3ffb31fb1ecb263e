"""``AuthMiddleware`` on a tiny Starlette app: 401 vs pass-through, rules, scopes, events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion._routes import AppRouteResolver
from bastion.auth import ApiKeys, Authenticator, AuthMiddleware, NewApiKey, RequireRule
from bastion.auth import get_principal as principal_of
from bastion.context import RequestContextMiddleware, get_context
from bastion.events import AuthenticationFailed, AuthenticationSucceeded, Hooks
from bastion.exceptions import ConfigurationError
from bastion.problem import PROBLEM_CONTENT_TYPE
from bastion.testing import capture_events
from bastion.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def whoami(request: Request) -> Response:
    """The principal as the app sees it, from the scope and from the request context."""
    principal = principal_of(request.scope)
    context = get_context(request.scope)
    return JSONResponse(
        {
            "principal": principal.id if principal is not None else None,
            "context": context.principal if context is not None else None,
            "scopes": sorted(principal.scopes) if principal is not None else [],
        }
    )


ROUTES = [
    Route("/public", whoami),
    Route("/items/{id}", whoami, methods=["GET", "POST", "DELETE"]),
    Route("/admin/stats", whoami),
    Route("/health", whoami),
]


@pytest.fixture
def hooks() -> Hooks:
    """The event registry the authenticator publishes to."""
    return Hooks()


@pytest.fixture
def keys(manual_clock: ManualClock) -> ApiKeys:
    """API keys in memory."""
    return ApiKeys(clock=manual_clock)


def build(keys: ApiKeys, hooks: Hooks, *, resolve_routes: bool = True, **options: Any) -> Starlette:
    """A Starlette app with the context middleware (resolving routes or not) outside auth."""
    app = Starlette(routes=ROUTES)
    app.add_middleware(
        AuthMiddleware, authenticator=Authenticator(api_keys=keys, hooks=hooks), **options
    )
    if resolve_routes:
        app.add_middleware(RequestContextMiddleware, route_resolver=AppRouteResolver(app))
    else:
        app.add_middleware(RequestContextMiddleware)
    return app


@pytest.fixture
async def writer(keys: ApiKeys) -> NewApiKey:
    """A key with scope items:write."""
    return await keys.create("writer", scopes=["items:write"])


@pytest.fixture
async def client(keys: ApiKeys, hooks: Hooks) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with rules: POST/DELETE items need items:write, /admin/* admin."""
    app = build(
        keys,
        hooks,
        require=[
            "POST,DELETE /items/{id}=items:write",
            RequireRule(path="/admin/*", scopes=("admin",)),
        ],
        exclude=["/health"],
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def problem(response: httpx.Response) -> dict[str, Any]:
    """The problem body of a response (failing if it is not problem+json)."""
    assert PROBLEM_CONTENT_TYPE == response.headers["content-type"]
    body: dict[str, Any] = response.json()
    return body


async def test_anonymous_requests_pass_where_nothing_is_required(
    client: httpx.AsyncClient,
) -> None:
    """No credentials on a public route: the app runs, with no principal."""
    response = await client.get("/public")
    assert (200, None, None) == (
        response.status_code,
        response.json()["principal"],
        response.json()["context"],
    )


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_a_valid_key_sets_the_principal_in_scope_and_context(
    client: httpx.AsyncClient, writer: NewApiKey, header: str
) -> None:
    """X-API-Key or Authorization: Bearer; the same principal id reaches the request context."""
    value = writer.key if header == "x-api-key" else f"Bearer {writer.key}"
    body = (await client.get("/public", headers={header: value})).json()
    expected = f"key:{writer.record.id}"
    assert {"principal": expected, "context": expected, "scopes": ["items:write"]} == body


async def test_invalid_credentials_are_refused_even_on_a_public_route(
    client: httpx.AsyncClient, keys: ApiKeys, writer: NewApiKey
) -> None:
    """A revoked key is a 401 problem with an invalid_token challenge, not an anonymous call."""
    await keys.revoke(writer.record.id)
    response = await client.get("/public", headers={"x-api-key": writer.key})
    body = problem(response)
    assert (401, "The API key is invalid, expired or revoked.") == (
        response.status_code,
        body["detail"],
    )
    assert (
        'Bearer realm="api", error="invalid_token", '
        'error_description="The API key is invalid, expired or revoked."'
    ) == response.headers["www-authenticate"]
    assert "no-store" == response.headers["cache-control"]


async def test_a_required_route_without_credentials_is_a_bare_challenge(
    client: httpx.AsyncClient,
) -> None:
    """POST /items/{id} with nothing: 401 and a challenge without an error code (RFC 6750 §3.1)."""
    response = await client.post("/items/7")
    problem(response)
    assert (401, 'Bearer realm="api"') == (
        response.status_code,
        response.headers["www-authenticate"],
    )


async def test_rules_match_methods_and_the_route_template(
    client: httpx.AsyncClient, writer: NewApiKey
) -> None:
    """GET /items/7 is open; POST and DELETE need items:write, which the writer has."""
    key = {"x-api-key": writer.key}
    statuses = [
        (await client.get("/items/7")).status_code,
        (await client.post("/items/7", headers=key)).status_code,
        (await client.delete("/items/8", headers=key)).status_code,
    ]
    assert [200, 200, 200] == statuses


async def test_rules_match_templates_even_when_the_context_has_no_route(
    keys: ApiKeys, hooks: Hooks
) -> None:
    """Without a resolving context, the middleware resolves the template itself: no bypass."""
    app = build(keys, hooks, resolve_routes=False, require=["POST /items/{id}"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/items/42")
    assert 401 == response.status_code


async def test_a_missing_scope_is_a_403_naming_it(
    client: httpx.AsyncClient, writer: NewApiKey
) -> None:
    """The writer on /admin/*: 403 insufficient_scope, the scope in challenge and body."""
    response = await client.get("/admin/stats", headers={"x-api-key": writer.key})
    body = problem(response)
    assert (403, ["admin"]) == (response.status_code, body["required_scopes"])
    assert response.headers["www-authenticate"].endswith(
        'error="insufficient_scope", error_description="The credentials do not grant the '
        'scope this request needs.", scope="admin"'
    )


async def test_excluded_paths_are_never_authenticated(
    client: httpx.AsyncClient, keys: ApiKeys, writer: NewApiKey
) -> None:
    """Even a revoked key passes /health untouched (and sets no principal)."""
    await keys.revoke(writer.record.id)
    response = await client.get("/health", headers={"x-api-key": writer.key})
    assert (200, None) == (response.status_code, response.json()["principal"])


async def test_two_credentials_are_ambiguous(client: httpx.AsyncClient, writer: NewApiKey) -> None:
    """An API key header and a bearer token together are refused, whichever is valid."""
    response = await client.get(
        "/public", headers={"x-api-key": writer.key, "authorization": "Bearer other"}
    )
    assert 401 == response.status_code
    assert "one credential" in problem(response)["detail"]


async def test_other_authorization_schemes_are_left_alone(client: httpx.AsyncClient) -> None:
    """Authorization: Basic is not bastion's business: the request passes as anonymous."""
    response = await client.get("/public", headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert (200, None) == (response.status_code, response.json()["principal"])


async def test_a_bearer_token_without_a_jwt_verifier_is_refused(
    client: httpx.AsyncClient,
) -> None:
    """A bearer value that is not an API key, with no JWT configured: 401."""
    response = await client.get("/public", headers={"authorization": "Bearer eyJhbGciOi.x.y"})
    assert 401 == response.status_code


async def test_events_name_the_reason_and_never_the_secret(
    client: httpx.AsyncClient, hooks: Hooks, keys: ApiKeys, writer: NewApiKey
) -> None:
    """Failures carry reason, status, key id and client; no event holds the key's secret."""
    with capture_events(hooks) as events:
        await client.get("/public", headers={"x-api-key": writer.key})
        await client.get("/admin/stats", headers={"x-api-key": writer.key})
        await keys.revoke(writer.record.id)
        await client.get("/public", headers={"x-api-key": writer.key})
        await client.post("/items/1")
    succeeded = [e for e in events if isinstance(e, AuthenticationSucceeded)]
    failed = [e for e in events if isinstance(e, AuthenticationFailed)]
    assert [f"key:{writer.record.id}"] * 2 == [event.principal for event in succeeded]
    assert [
        ("insufficient_scope", 403, "api_key", writer.record.id, "/admin/stats"),
        ("revoked", 401, "api_key", writer.record.id, "/public"),
        ("missing", 401, None, None, "/items/{id}"),
    ] == [(e.reason, e.status, e.credential, e.key_id, e.route) for e in failed]
    assert {"203.0.113.9"} == {event.client for event in failed}
    secret = writer.key.split("_", 2)[2]
    assert [] == [event for event in events if secret in repr(event)]


async def test_a_websocket_with_invalid_credentials_is_refused(keys: ApiKeys, hooks: Hooks) -> None:
    """A revoked key closes the handshake with 1008 before the app runs; a valid key connects."""
    writer = await keys.create("socket")
    reached: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        principal = principal_of(scope)
        reached.append(principal.id if principal is not None else None)
        await send({"type": "websocket.accept"})

    middleware = AuthMiddleware(app, authenticator=Authenticator(api_keys=keys, hooks=hooks))

    async def connect() -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "path": "/ws",
            "headers": [(b"x-api-key", writer.key.encode())],
            "client": ("203.0.113.9", 5000),
        }
        await middleware(scope, receive, send)
        return sent

    accepted = await connect()
    await keys.revoke(writer.record.id)
    refused = await connect()
    assert [{"type": "websocket.accept"}] == accepted
    assert [{"type": "websocket.close", "code": 1008}] == refused
    assert [f"key:{writer.record.id}"] == reached


@pytest.mark.parametrize("rule", ["", "=admin", "items", "get /items", "GET|POST /x"])
def test_invalid_rules_fail_at_construction(rule: str) -> None:
    """Bad patterns are ConfigurationErrors when the middleware is built, not per request."""
    with pytest.raises(ConfigurationError):
        AuthMiddleware(whoami, require=[rule])  # type: ignore[arg-type]


def test_the_rule_shorthand_parses_methods_pattern_and_scopes() -> None:
    """'[METHODS ]PATTERN[=SCOPE ...]', scopes space-separated; mappings work too."""
    assert [
        RequireRule(path="POST,PUT /items*", scopes=("a", "b")),
        RequireRule(path="/me"),
        RequireRule(path="/admin/*", scopes=("admin",)),
    ] == [
        RequireRule.parse("POST,PUT /items*=a  b"),
        RequireRule.parse("/me"),
        RequireRule.from_value({"path": "/admin/*", "scopes": ["admin"]}),
    ]
