"""``limit()``: rate limits declared on FastAPI routes, alone, with the middleware, with Bastion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from starlette.requests import Request

from bastion import Bastion, Settings
from bastion._clock import ManualClock
from bastion.integrations.starlette import install_problem_handlers
from bastion.problem import PROBLEM_CONTENT_TYPE
from bastion.ratelimit import (
    QUOTA_EXCEEDED,
    Limit,
    RateLimiter,
    RateLimitExceeded,
    RateLimitMiddleware,
    RateLimitRefused,
    limit,
    rate_limit_problem,
)
from bastion.ratelimit._fastapi import APP_STATE_ATTRIBUTE
from bastion.testing import lifespan
from bastion.types import ASGIApp, Scope
from tests.ratelimit.headers import parse_list, remaining

pytestmark = pytest.mark.anyio


def aligned_clock() -> ManualClock:
    """A manual clock at the start of a day, so every window starts with the test."""
    return ManualClock(864_000.0)


def api(**options: Any) -> FastAPI:
    """A FastAPI app whose routes declare limits; ``options`` go to every ``limit()``."""
    app = FastAPI()
    options.setdefault("algorithm", "fixed_window")

    @app.get("/items/{item_id}", dependencies=[limit("2/minute", **options)])
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/search", dependencies=[limit("2/minute", **options)])
    async def search() -> dict[str, str]:
        return {"results": "none"}

    @app.get("/raw", dependencies=[limit("2/minute", **options)])
    async def raw() -> PlainTextResponse:
        return PlainTextResponse("raw")

    return app


@asynccontextmanager
async def client(app: ASGIApp, peer: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client whose socket peer is ``peer``, with the lifespan running."""
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_admitted_responses_carry_the_headers_without_any_middleware() -> None:
    """Alone, the dependency sets RateLimit-Policy and RateLimit on FastAPI's response."""
    limiter = RateLimiter(clock=aligned_clock())
    async with client(api(limiter=limiter)) as http:
        responses = [await http.get("/items/1") for _ in range(2)]
    assert [[("/items/{item_id}", {"q": 2, "w": 60})]] * 2 == [
        parse_list(response.headers["ratelimit-policy"]) for response in responses
    ]
    assert [1, 0] == [remaining(response.headers, "/items/{item_id}") for response in responses]


async def test_a_refusal_raises_an_http_exception_that_keeps_its_headers() -> None:
    """With FastAPI's own handler, the 429 is its JSON error, with Retry-After and RateLimit."""
    limiter = RateLimiter(clock=aligned_clock())
    async with client(api(limiter=limiter)) as http:
        responses = [await http.get("/search") for _ in range(3)]
    refused = responses[2]
    assert (429, "60", {"detail": "Too many requests; retry in 60 s."}) == (
        refused.status_code,
        refused.headers["retry-after"],
        refused.json(),
    )
    assert [("/search", {"r": 0, "t": 60})] == parse_list(refused.headers["ratelimit"])


async def test_bastions_problem_handler_renders_the_refusal_with_its_headers() -> None:
    """With bastion's HTTPException handler the 429 is problem+json, headers intact."""
    app = api(limiter=RateLimiter(clock=aligned_clock()))
    install_problem_handlers(app)
    async with client(app) as http:
        refused = [await http.get("/search") for _ in range(3)][2]
    assert (429, PROBLEM_CONTENT_TYPE, "60", 0) == (
        refused.status_code,
        refused.headers["content-type"],
        refused.headers["retry-after"],
        remaining(refused.headers, "/search"),
    )
    assert {"type": "about:blank", "title": "Too Many Requests", "status": 429} == {
        name: refused.json()[name] for name in ("type", "title", "status")
    }


async def test_rate_limit_problem_renders_the_drafts_problem_type() -> None:
    """rate_limit_problem: type quota-exceeded, violated-policies, Retry-After, no-store."""
    app = api(limiter=RateLimiter(clock=aligned_clock()))
    app.add_exception_handler(RateLimitRefused, rate_limit_problem)
    async with client(app) as http:
        refused = [await http.get("/search") for _ in range(3)][2]
    assert (429, "60", "no-store") == (
        refused.status_code,
        refused.headers["retry-after"],
        refused.headers["cache-control"],
    )
    assert {
        "type": QUOTA_EXCEEDED,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Too many requests; retry in 60 s.",
        "violated-policies": ["/search"],
    } == refused.json()


async def test_each_route_has_its_own_budget_named_after_its_template() -> None:
    """Two routes declaring the same limit() do not share a budget; ids share theirs."""
    limiter = RateLimiter(clock=aligned_clock())
    async with client(api(limiter=limiter)) as http:
        items = [(await http.get(f"/items/{n}")).status_code for n in range(3)]
        search = [(await http.get("/search")).status_code for _ in range(2)]
    assert ([200, 200, 429], [200, 200]) == (items, search)


async def test_a_shared_name_and_per_route_false_pool_several_routes() -> None:
    """limit(..., name="reads", per_route=False) on two routes draws from one budget."""
    limiter = RateLimiter(clock=aligned_clock())
    app = api(limiter=limiter, name="reads", per_route=False)
    async with client(app) as http:
        results = [(await http.get(path)).status_code for path in ("/search", "/items/1", "/raw")]
        policy = (await http.get("/search")).headers["retry-after"]
    assert ([200, 200, 429], "60") == (results, policy)


async def test_key_and_cost_functions_receive_the_scope() -> None:
    """key= picks the budget from the scope, cost= how much a request spends."""

    def tenant(scope: Scope) -> str:
        return "t:" + str(scope["path_params"]["tenant"])

    def weight(scope: Scope) -> int:
        return 3 if scope["query_string"] == b"bulk=1" else 1

    app = FastAPI()
    limiter = RateLimiter(clock=aligned_clock())

    @app.get(
        "/t/{tenant}", dependencies=[limit("4/minute", key=tenant, cost=weight, limiter=limiter)]
    )
    async def per_tenant(tenant: str) -> dict[str, str]:
        return {"tenant": tenant}

    async with client(app) as http:
        results = [
            (await http.get(path)).status_code
            for path in ("/t/a?bulk=1", "/t/a", "/t/a", "/t/b?bulk=1", "/t/b?bulk=1")
        ]
    assert [200, 200, 429, 200, 429] == results


async def test_a_limit_object_keeps_its_own_name_and_algorithm() -> None:
    """limit(Limit(...)) uses the limit as given: its name is the policy on every route."""
    app = FastAPI()
    bucket = Limit("1/second burst 2", name="bucket", algorithm="gcra")
    limiter = RateLimiter(clock=aligned_clock())

    @app.get("/a", dependencies=[limit(bucket, limiter=limiter)])
    async def route_a() -> dict[str, str]:
        return {}

    async with client(app) as http:
        responses = [await http.get("/a") for _ in range(3)]
    assert [200, 200, 429] == [response.status_code for response in responses]
    assert [("bucket", {"q": 1, "w": 1})] == parse_list(responses[0].headers["ratelimit-policy"])


# -------------------------------------------------------------------------- finding the limiter


async def test_without_any_limiter_one_is_created_on_the_app_state() -> None:
    """No limiter anywhere: a memory one is made on app.state, shared by the app's routes."""
    app = api()
    async with client(app) as http:
        results = [(await http.get("/search")).status_code for _ in range(3)]
    assert ([200, 200, 429], True) == (
        results,
        isinstance(getattr(app.state, APP_STATE_ATTRIBUTE), RateLimiter),
    )


async def test_a_limiter_on_the_app_state_is_used() -> None:
    """app.state.bastion_ratelimiter is where to put a limiter for every limit()."""
    app = api()
    limiter = RateLimiter(clock=aligned_clock())
    setattr(app.state, APP_STATE_ATTRIBUTE, limiter)
    async with client(app) as http:
        await http.get("/search")
    decision = await limiter.hit(Limit("9/minute"), "probe")
    assert (True, limiter) == (decision.allowed, getattr(app.state, APP_STATE_ATTRIBUTE))


async def test_the_middlewares_limiter_is_found_in_the_scope() -> None:
    """With RateLimitMiddleware installed, limit() uses the limiter it put in the scope."""
    events: list[str] = []

    class Recording(RateLimiter):
        async def decide(self, *args: Any, **kwargs: Any) -> Any:
            events.append("decide")
            return await super().decide(*args, **kwargs)

    app = api()
    app.add_middleware(RateLimitMiddleware, limiter=Recording(clock=aligned_clock()))
    async with client(app) as http:
        await http.get("/search")
    assert (["decide"], False) == (events, hasattr(app.state, APP_STATE_ATTRIBUTE))


# ----------------------------------------------------------------------------- with middleware


async def test_with_the_middleware_a_returned_response_keeps_the_headers() -> None:
    """An endpoint returning its own Response loses FastAPI's headers; the middleware adds them."""
    limiter = RateLimiter(clock=aligned_clock())
    alone = api(limiter=limiter)
    async with client(alone) as http:
        lost = await http.get("/raw")
    combined = api(limiter=limiter)
    combined.add_middleware(RateLimitMiddleware, limiter=limiter, rate="10/minute")
    async with client(combined, peer="198.51.100.9") as http:
        kept = await http.get("/raw")
    assert (None, "raw") == (lost.headers.get("ratelimit"), lost.text)
    assert [("default", {"r": 9, "t": 60}), ("/raw", {"r": 1, "t": 60})] == parse_list(
        kept.headers["ratelimit"]
    )
    assert [("default", {"q": 10, "w": 60}), ("/raw", {"q": 2, "w": 60})] == parse_list(
        kept.headers["ratelimit-policy"]
    )


async def test_a_dependency_refusal_under_the_middleware_lists_both_limits() -> None:
    """The 429 of a dependency carries its refused quota and the middleware's admitted one."""
    limiter = RateLimiter(clock=aligned_clock())
    app = api(limiter=limiter)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rate="10/minute")
    async with client(app) as http:
        refused = [await http.get("/search") for _ in range(3)][2]
    assert (429, {"/search": 0, "default": 7}) == (
        refused.status_code,
        {name: parameters["r"] for name, parameters in parse_list(refused.headers["ratelimit"])},
    )


async def test_the_middleware_headers_switch_governs_the_dependencies_too() -> None:
    """RateLimitMiddleware(headers=False): dependencies add no RateLimit fields either."""
    limiter = RateLimiter(clock=aligned_clock())
    app = api(limiter=limiter)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, headers=False)
    async with client(app) as http:
        response = await http.get("/search")
    assert (200, None) == (response.status_code, response.headers.get("ratelimit"))


async def test_a_dependency_with_headers_off_adds_none() -> None:
    """limit(headers=False) keeps quiet on success and sends only Retry-After on refusal."""
    limiter = RateLimiter(clock=aligned_clock())
    async with client(api(limiter=limiter, headers=False)) as http:
        responses = [await http.get("/search") for _ in range(3)]
    assert [None, None, None] == [response.headers.get("ratelimit") for response in responses]
    assert "60" == responses[2].headers["retry-after"]


# ------------------------------------------------------------------------------- with Bastion


async def test_under_bastion_limits_use_its_request_context(isolated_env: None) -> None:
    """Inside Bastion's pipeline the route and client come from its context; errors are problems."""
    app = api(limiter=RateLimiter(clock=aligned_clock()))
    app.add_middleware(RateLimitMiddleware, limiter=RateLimiter(clock=aligned_clock()))
    Bastion(app, Settings(_env_file=None))
    async with client(app) as http:
        spoofed = [
            await http.get("/items/1", headers={"X-Forwarded-For": f"1.1.1.{n}"}) for n in range(3)
        ]
    refused = spoofed[2]
    assert [200, 200, 429] == [response.status_code for response in spoofed]
    assert (PROBLEM_CONTENT_TYPE, refused.headers["x-request-id"]) == (
        refused.headers["content-type"],
        refused.json()["request_id"],
    )


async def test_rate_limit_exceeded_is_an_http_exception_with_the_decision() -> None:
    """The exception carries the decision, for handlers that want more than the headers."""
    limiter = RateLimiter(clock=aligned_clock())
    app = api(limiter=limiter)
    caught: list[RateLimitExceeded] = []

    async def handler(request: Request, exc: Exception) -> PlainTextResponse:
        assert isinstance(exc, RateLimitExceeded)
        caught.append(exc)
        return PlainTextResponse("slow down", 429)

    app.add_exception_handler(RateLimitExceeded, handler)
    async with client(app) as http:
        responses = [await http.get("/search") for _ in range(3)]
    assert ("slow down", ("/search",), 60.0) == (
        responses[2].text,
        caught[0].decision.violated,
        caught[0].decision.retry_after_s,
    )
