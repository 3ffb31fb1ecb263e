"""``RateLimitMiddleware`` on a tiny Starlette app behind bastion's request context.

The request context comes from the real ``RequestContextMiddleware`` with a route resolver, so
keys use the same client address and route template logic as production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bastion._clock import ManualClock
from bastion._routes import AppRouteResolver
from bastion.context import RequestContextMiddleware, get_context
from bastion.events import Event, Hooks, RateLimited
from bastion.exceptions import ConfigurationError
from bastion.problem import PROBLEM_CONTENT_TYPE
from bastion.ratelimit import (
    LIMITER_SCOPE_KEY,
    QUOTA_EXCEEDED,
    Limit,
    RateLimiter,
    RateLimitMiddleware,
    Rule,
    rate_limit,
)
from bastion.types import ASGIApp, Receive, Scope, Send
from tests.asgi import call, http_scope
from tests.ratelimit.headers import parse_list, remaining

pytestmark = pytest.mark.anyio


async def ok(request: Request) -> Response:
    """Every route answers 200 with a short body."""
    return PlainTextResponse("ok")


async def stream(request: Request) -> Response:
    """A streamed response, to show headers are added without touching the body."""

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b", b"c"):
            yield chunk

    return StreamingResponse(chunks())


def starlette_app() -> Starlette:
    """Routes of each kind the tests need."""
    return Starlette(
        routes=[
            Route("/items/{item_id}", ok),
            Route("/search", ok),
            Route("/search/advanced", ok),
            Route("/upload", ok, methods=["POST", "GET"]),
            Route("/docs", ok),
            Route("/stream", stream),
        ]
    )


class SetPrincipal:
    """Stands in for authentication: the ``x-user`` header becomes the context's principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        for name, value in scope.get("headers", ()):
            if name == b"x-user" and context is not None:
                context.principal = value.decode()
        await self.app(scope, receive, send)


def aligned_clock() -> ManualClock:
    """A manual clock at the start of a day, so every window starts with the test."""
    return ManualClock(864_000.0)


def build(
    *, trusted_proxies: tuple[str, ...] = (), clock: ManualClock | None = None, **options: Any
) -> ASGIApp:
    """Request context (real client and route logic), then the middleware, then the app."""
    app = starlette_app()
    options.setdefault("limiter", RateLimiter(clock=clock or aligned_clock()))
    app.add_middleware(RateLimitMiddleware, **options)
    return RequestContextMiddleware(
        SetPrincipal(app),
        route_resolver=AppRouteResolver(app),
        trusted_proxies=trusted_proxies,
    )


def client(app: ASGIApp, peer: str = "203.0.113.7") -> httpx.AsyncClient:
    """An in-process HTTP client whose socket peer is ``peer``."""
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def statuses(http: httpx.AsyncClient, path: str, count: int, **kwargs: Any) -> list[int]:
    """Status codes of ``count`` sequential GETs of ``path``."""
    return [(await http.get(path, **kwargs)).status_code for _ in range(count)]


# --------------------------------------------------------------------------------- headers


async def test_admitted_responses_carry_policy_and_state_headers() -> None:
    """Each 200 says the policy (q, w) and what is left (r, t), counting down."""
    async with client(build(rate="3/minute", algorithm="fixed_window")) as http:
        responses = [await http.get("/search") for _ in range(3)]
    assert [200, 200, 200] == [response.status_code for response in responses]
    assert [[("default", {"q": 3, "w": 60})]] * 3 == [
        parse_list(response.headers["ratelimit-policy"]) for response in responses
    ]
    assert [
        [("default", {"r": 2, "t": 60})],
        [("default", {"r": 1, "t": 60})],
        [("default", {"r": 0, "t": 60})],
    ] == [parse_list(response.headers["ratelimit"]) for response in responses]


async def test_a_refusal_is_a_problem_429_with_retry_after_and_the_state() -> None:
    """The 4th request: 429 problem+json (quota-exceeded), Retry-After >= t, r=0."""
    clock = aligned_clock()
    async with client(build(rate="3/minute", algorithm="fixed_window", clock=clock)) as http:
        await statuses(http, "/search", 3)
        clock.advance(20.5)
        response = await http.get("/search")
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert (429, PROBLEM_CONTENT_TYPE, "40") == (
        response.status_code,
        response.headers["content-type"],
        response.headers["retry-after"],
    )
    assert [("default", {"r": 0, "t": 40})] == parse_list(response.headers["ratelimit"])
    assert {
        "type": QUOTA_EXCEEDED,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Too many requests; retry in 40 s.",
        "violated-policies": ["default"],
        "request_id": request_id,
    } == body


async def test_retry_after_is_rounded_up_to_whole_seconds() -> None:
    """A wait of 0.4 s is announced as 1 s, never 0."""
    clock = aligned_clock()
    async with client(build(rate="2/second", algorithm="fixed_window", clock=clock)) as http:
        await statuses(http, "/search", 2)
        clock.advance(0.6)
        response = await http.get("/search")
    assert ("1", 429) == (response.headers["retry-after"], response.status_code)


async def test_headers_can_be_turned_off_but_retry_after_stays() -> None:
    """headers=False: no RateLimit fields; a refusal still says when to retry."""
    async with client(build(rate="1/minute", algorithm="fixed_window", headers=False)) as http:
        admitted, refused = await http.get("/search"), await http.get("/search")
    assert (None, None, "60") == (
        admitted.headers.get("ratelimit"),
        refused.headers.get("ratelimit"),
        refused.headers["retry-after"],
    )


async def test_streamed_responses_get_headers_and_keep_their_body() -> None:
    """Headers go on http.response.start; the streamed chunks pass untouched."""
    async with client(build(rate="5/minute")) as http:
        response = await http.get("/stream")
    assert (b"abc", 4) == (response.content, remaining(response.headers, "default"))


# ------------------------------------------------------------------------------------ keys


async def test_each_route_has_its_own_budget_shared_by_all_its_paths() -> None:
    """/items/1 and /items/2 share the /items/{item_id} budget; /search has another."""
    async with client(build(rate="2/minute")) as http:
        items = [(await http.get(f"/items/{n}")).status_code for n in range(3)]
        search = await statuses(http, "/search", 2)
    assert ([200, 200, 429], [200, 200]) == (items, search)


async def test_methods_have_separate_budgets_on_one_route() -> None:
    """GET and POST on /upload count separately (the key holds the method)."""
    async with client(build(rate="1/minute")) as http:
        results = [
            (await http.request(method, "/upload")).status_code
            for method in ("GET", "POST", "GET", "POST")
        ]
    assert [200, 200, 429, 429] == results


async def test_paths_matching_no_route_share_one_budget() -> None:
    """Random 404 paths cannot each get a fresh budget: they share one."""
    async with client(build(rate="2/minute")) as http:
        results = [(await http.get(f"/nope/{n}")).status_code for n in range(3)]
    assert [404, 404, 429] == results


async def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() -> None:
    """X-Forwarded-For is ignored unless the peer is a trusted proxy: no fresh budget per spoof."""
    async with client(build(rate="2/minute")) as http:
        results = [
            (await http.get("/search", headers={"X-Forwarded-For": f"1.2.3.{n}"})).status_code
            for n in range(3)
        ]
    assert [200, 200, 429] == results


async def test_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    """Behind a trusted proxy, each forwarded client address has its own budget."""
    app = build(rate="1/minute", trusted_proxies=("10.0.0.0/8",))
    async with client(app, peer="10.0.0.2") as http:
        results = [
            (await http.get("/search", headers={"X-Forwarded-For": address})).status_code
            for address in ("1.2.3.4", "1.2.3.5", "1.2.3.4")
        ]
    assert [200, 200, 429] == results


async def test_a_principal_is_limited_by_identity_not_address() -> None:
    """With a principal set, its budget follows it across addresses; others keep their own."""
    app = build(rate="2/minute")
    results = []
    calls = [("198.51.100.1", "alice"), ("198.51.100.2", "alice"), ("198.51.100.3", "alice")]
    for peer, user in [*calls, ("198.51.100.1", "bob")]:
        async with client(app, peer=peer) as http:
            results.append((await http.get("/search", headers={"x-user": user})).status_code)
    assert [200, 200, 429, 200] == results


async def test_a_custom_key_function_chooses_the_budget() -> None:
    """key= decides whose budget is spent; returning None leaves a request unlimited."""

    def tenant(scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-tenant":
                return "tenant:" + str(value.decode())
        return None

    async with client(build(rate="1/minute", key=tenant)) as http:
        results = [
            (await http.get("/search", headers=headers)).status_code
            for headers in ({"x-tenant": "a"}, {"x-tenant": "a"}, {"x-tenant": "b"}, {}, {})
        ]
    assert [200, 429, 200, 200, 200] == results


# -------------------------------------------------------------------------- rules and global


async def test_the_first_matching_rule_replaces_the_default() -> None:
    """Rules are tried in order; a match applies instead of rate, which covers the rest."""
    rules = [Rule(path="/search/*", rate="1/minute", name="deep"), "/search*=2/minute"]
    async with client(build(rate="3/minute", rules=rules)) as http:
        deep = await statuses(http, "/search/advanced", 2)
        search = await statuses(http, "/search", 3)
        items = await statuses(http, "/items/1", 4)
        policies = (await http.get("/docs")).headers["ratelimit-policy"]
    assert ([200, 429], [200, 200, 429], [200, 200, 200, 429]) == (deep, search, items)
    assert [("default", {"q": 3, "w": 60})] == parse_list(policies)


async def test_rules_can_name_methods() -> None:
    """'POST /upload' limits POSTs only; GETs fall back to the default."""
    async with client(build(rate="10/minute", rules=["POST /upload=1/minute"])) as http:
        posts = [(await http.post("/upload")).status_code for _ in range(2)]
        gets = await statuses(http, "/upload", 2)
    assert ([200, 429], [200, 200]) == (posts, gets)


async def test_a_rule_without_per_route_shares_one_budget_across_its_routes() -> None:
    """per_route=False: /search and /search/advanced draw from one budget."""
    rule = {"path": "/search*", "rate": "2/minute", "per_route": False, "name": "search"}
    async with client(build(rules=[rule])) as http:
        paths = ("/search", "/search/advanced", "/search")
        results = [(await http.get(path)).status_code for path in paths]
    assert [200, 200, 429] == results


async def test_the_global_rate_is_shared_by_every_route_on_top_of_route_limits() -> None:
    """global_rate counts all routes together; each response lists both policies."""
    async with client(build(rate="5/minute", global_rate="3/minute")) as http:
        responses = [await http.get(path) for path in ("/search", "/items/1", "/docs", "/search")]
    assert [200, 200, 200, 429] == [response.status_code for response in responses]
    assert [("global", {"q": 3, "w": 60}), ("default", {"q": 5, "w": 60})] == parse_list(
        responses[0].headers["ratelimit-policy"]
    )
    assert ["global"] == responses[3].json()["violated-policies"]
    # The refused request charged neither limit: /search still has 4 of 5 route units.
    assert [("global", {"r": 0, "t": 60}), ("default", {"r": 4, "t": 60})] == parse_list(
        responses[3].headers["ratelimit"]
    )


async def test_a_route_with_no_limit_passes_untouched() -> None:
    """Without rate, rules or global_rate matching, responses carry no RateLimit fields."""
    async with client(build(rules=["/search=1/minute"])) as http:
        response = await http.get("/docs")
    assert (200, None) == (response.status_code, response.headers.get("ratelimit"))


async def test_excluded_patterns_and_predicates_are_never_limited() -> None:
    """exclude= takes patterns or a predicate; excluded requests spend nothing."""
    async with client(build(rate="1/minute", exclude=["/docs", "/items/*"])) as http:
        excluded = await statuses(http, "/docs", 3) + await statuses(http, "/items/9", 3)
        limited = await statuses(http, "/search", 2)

    def is_docs(scope: Scope) -> bool:
        return bool(scope["path"] == "/docs")

    async with client(build(rate="1/minute", exclude=is_docs)) as http:
        predicate = await statuses(http, "/docs", 2)
    assert ([200] * 6, [200, 429], [200, 200]) == (excluded, limited, predicate)


async def test_limits_can_be_given_as_limit_objects() -> None:
    """rate= and global_rate= take a Limit too, with its own name and algorithm."""
    rate = Limit("1/second burst 2", name="bucket", algorithm="gcra")
    async with client(build(rate=rate)) as http:
        results = await statuses(http, "/search", 3)
        policy = (await http.get("/docs")).headers["ratelimit-policy"]
    assert ([200, 200, 429], [("bucket", {"q": 1, "w": 1})]) == (results, parse_list(policy))


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"rate": "lots"}, "invalid rate"),
        ({"rules": ["/search"]}, "invalid rule"),
        ({"rules": ["search=1/s"]}, "must start with '/'"),
        ({"rules": ["get /x=1/s"]}, "methods in capitals"),
        ({"rules": [{"path": "/x", "rate": "1/s", "burst": 3}]}, "fields are path, rate"),
        ({"rules": [{"path": "/x", "rate": "1/s", "cost": -1}]}, "cost must be"),
        ({"rules": [42]}, "expected a string or a mapping"),
        ({"algorithm": "token"}, "unknown rate-limit algorithm"),
        ({"exclude": ["docs"]}, "must start with '/'"),
    ],
)
def test_invalid_options_fail_at_construction(options: dict[str, Any], fragment: str) -> None:
    """Bad rates, rules, patterns and algorithms are ConfigurationErrors before any request."""
    with pytest.raises(ConfigurationError) as caught:
        RateLimitMiddleware(starlette_app(), **options)
    assert fragment in str(caught.value)


# ---------------------------------------------------------------------------- without context


async def test_without_a_request_context_routes_come_from_the_starlette_app() -> None:
    """Used alone via add_middleware, the middleware resolves templates from scope["app"]."""
    app = starlette_app()
    app.add_middleware(RateLimitMiddleware, rate="1/minute")
    async with client(app) as http:
        paths = ("/items/1", "/items/2", "/search")
        results = [(await http.get(path)).status_code for path in paths]
    assert [200, 429, 200] == results


async def test_a_raw_asgi_app_without_routes_shares_one_budget_per_client() -> None:
    """With no route template to be found, all paths of a client share the budget."""

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RateLimitMiddleware(raw, rate="2/minute")
    results = [(await call(app, http_scope(path))).status for path in ("/a", "/b", "/c")]
    other = await call(app, http_scope("/a", client=("192.0.2.1", 1)))
    assert ([204, 204, 429], 204) == (results, other.status)


async def test_without_a_context_every_path_of_a_route_counts_down_one_budget() -> None:
    """Many distinct ids (more than the path memo holds) spend one budget, and headers count."""
    app = starlette_app()
    app.add_middleware(
        RateLimitMiddleware,
        rate="5000/minute; 10000/hour",
        limiter=RateLimiter(clock=aligned_clock()),
    )
    async with client(app) as http:
        for item in range(4999):
            assert 200 == (await http.get(f"/items/{item}")).status_code
        last = await http.get("/items/1")
        refused = await http.get("/items/4999999")
    assert [("default-1m", 0), ("default-1h", 5000)] == [
        (name, params["r"]) for name, params in parse_list(last.headers["ratelimit"])
    ]
    assert 429 == refused.status_code


async def test_without_a_context_or_a_peer_clients_share_one_unknown_budget() -> None:
    """No socket peer (a Unix socket) and no context: one budget, not an error."""

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RateLimitMiddleware(raw, rate="1/minute")
    results = [(await call(app, http_scope("/a", client=None))).status for _ in range(2)]
    assert [204, 429] == results


async def test_other_scopes_pass_through_untouched() -> None:
    """Lifespan and WebSocket scopes reach the app without a limiter in them."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope))

    middleware = RateLimitMiddleware(app, rate="1/minute")

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert [False, False] == [LIMITER_SCOPE_KEY in scope for scope in seen]


# -------------------------------------------------------------------------------------- events


async def test_refusals_publish_rate_limited_without_the_client_address() -> None:
    """RateLimited names the policy, route and principal; the key is only a digest."""
    events: list[Event] = []
    hooks = Hooks()
    hooks.subscribe(Event, events.append)
    limiter = RateLimiter(hooks=hooks, clock=aligned_clock())
    async with client(build(rate="1/minute", algorithm="fixed_window", limiter=limiter)) as http:
        await statuses(http, "/items/7", 2, headers={"x-user": "alice"})
        await statuses(http, "/items/7", 2)
    refusals = [event for event in events if isinstance(event, RateLimited)]
    assert 2 == len(refusals)
    first, second = refusals
    assert (("default",), "GET", "/items/{item_id}", "alice", 1, 60.0) == (
        first.policies,
        first.method,
        first.route,
        first.principal,
        first.cost,
        first.retry_after_s,
    )
    assert (None, 16) == (second.principal, len(second.partition))
    assert "203.0.113.7" not in repr(refusals)
    assert first.partition != second.partition


def test_the_header_parser_used_here_is_strict() -> None:
    """The test helper reads the draft's examples and rejects malformed fields."""
    assert [("permin", {"q": 50, "w": 60}), ("perhr", {"q": 1000, "w": 3600})] == parse_list(
        '"permin";q=50;w=60,"perhr";q=1000;w=3600'
    )
    rejected = []
    for bad in ("default;r=1", '"a";r=x', '"a";r=1,', '"a" "b"', '"a";R=1'):
        try:
            parse_list(bad)
        except ValueError:
            rejected.append(bad)
    assert 5 == len(rejected)


async def test_the_middleware_alone_applies_limits_its_app_s_endpoints_declared() -> None:
    """RateLimitMiddleware without any rate of its own finds @rate_limit declarations in the
    app's route table (a Starlette app here) and applies them by route."""

    @rate_limit("1/minute")
    async def limited(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/items/{item_id}", limited), Route("/free", ok)],
        middleware=[Middleware(RateLimitMiddleware)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        items = [(await client.get(f"/items/{n}")).status_code for n in (1, 2)]
        free = [(await client.get("/free")).status_code for _ in range(2)]
    assert ([200, 429], [200, 200]) == (items, free)
