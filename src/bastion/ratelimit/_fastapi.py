"""``limit()``: a rate limit declared on a FastAPI route, as a dependency.

This module needs Starlette; ``limit()`` itself needs FastAPI.

::

    @app.get("/search", dependencies=[limit("10/second; 500/hour")])
    async def search(q: str): ...

The dependency finds its limiter, in order: the ``limiter=`` argument; the one
``RateLimitMiddleware`` (or ``Bastion``) put in the scope; ``app.state.bastion_ratelimiter``; and
otherwise a process-local memory limiter it creates there on first use.

A refused request raises ``RateLimitExceeded`` (429) or, when the store failed closed,
``RateLimitUnavailable`` (503). Both are Starlette ``HTTPException`` subclasses carrying
``Retry-After`` and the ``RateLimit`` fields as headers, so any handler of ``HTTPException``
keeps them; ``rate_limit_problem`` renders them as RFC 9457 problems with the draft's problem
types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from bastion.context import SCOPE_KEY, RequestContext
from bastion.problem import PROBLEM_CONTENT_TYPE, TEMPORARY_REDUCED_CAPACITY_TITLE, problem_body
from bastion.ratelimit._http import (
    DECISIONS_SCOPE_KEY,
    LIMITER_SCOPE_KEY,
    QUOTA_EXCEEDED,
    TEMPORARY_REDUCED_CAPACITY,
    KeyFunc,
    client_key,
    decision_headers,
    refusal_headers,
    retry_after,
)
from bastion.ratelimit._limiter import Check, Decision, RateLimiter
from bastion.ratelimit._rates import Algorithm, Limit, Quota
from bastion.types import Scope

__all__ = [
    "APP_STATE_ATTRIBUTE",
    "RateLimitExceeded",
    "RateLimitRefused",
    "RateLimitUnavailable",
    "limit",
    "rate_limit_problem",
]

APP_STATE_ATTRIBUTE = "bastion_ratelimiter"
"""``app.state`` attribute where ``limit()`` looks for a limiter when no middleware set one."""

_MISSING: Any = object()


class RateLimitRefused(HTTPException):
    """A ``limit()`` dependency refused the request; ``decision`` says why.

    Args:
        decision: the refused decision.
        headers: include the ``RateLimit`` fields (``Retry-After`` is always sent).
    """

    def __init__(self, decision: Decision, *, headers: bool = True) -> None:
        wait = retry_after(decision.retry_after_s)
        status, detail = (
            (503, f"Rate limits cannot be checked right now; retry in {wait} s.")
            if decision.unavailable
            else (429, f"Too many requests; retry in {wait} s.")
        )
        super().__init__(
            status,
            detail=detail,
            headers={
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in refusal_headers(decision, headers=headers)
            },
        )
        self.decision = decision


class RateLimitExceeded(RateLimitRefused):
    """429: a quota is spent. Retry after ``Retry-After`` seconds."""


class RateLimitUnavailable(RateLimitRefused):
    """503: the store is down and the limiter's policy is ``fail_closed``."""


async def rate_limit_problem(request: Request, exc: Exception) -> Response:
    """Exception handler rendering ``RateLimitRefused`` as an RFC 9457 problem.

    Register it with ``app.add_exception_handler(RateLimitRefused, rate_limit_problem)`` (or let
    ``Bastion`` do it). The body uses the problem types of the RateLimit draft
    (``quota-exceeded``, ``temporary-reduced-capacity``) and lists ``violated-policies``.
    """
    if not isinstance(exc, RateLimitRefused):
        raise TypeError(f"expected a RateLimitRefused, got {type(exc).__name__}")
    members: dict[str, Any] = {"violated-policies": list(exc.decision.violated)}
    context: RequestContext | None = request.scope.get(SCOPE_KEY)
    if context is not None:
        members["request_id"] = context.request_id
    if exc.status_code == 503:
        type_ = TEMPORARY_REDUCED_CAPACITY
        title = TEMPORARY_REDUCED_CAPACITY_TITLE
    else:
        type_ = QUOTA_EXCEEDED
        title = "Request cannot be satisfied as assigned quota has been exceeded"
    body = problem_body(
        exc.status_code, title=title, detail=exc.detail, type_=type_, extensions=members
    )
    headers = dict(exc.headers or {})
    headers["cache-control"] = "no-store"
    return Response(body, exc.status_code, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def limit(
    rates: str | Quota | list[str | Quota] | Limit,
    /,
    *,
    key: KeyFunc | None = None,
    cost: int | Callable[[Scope], int] = 1,
    name: str | None = None,
    algorithm: Algorithm = "sliding_window",
    per_route: bool = True,
    limiter: RateLimiter | None = None,
    headers: bool = True,
) -> Any:
    """A FastAPI dependency that applies a rate limit to the routes that declare it.

    Use it in ``dependencies=[limit("100/minute")]`` or as a parameter default. All its quotas
    are checked in one atomic decision; a refused request is not charged.

    Args:
        rates: the quotas (``"10/second; 1000/hour"``), or a ready ``Limit``.
        key: whose budget a request spends, from the scope; default: the principal, else the
            client address. Return ``None`` to leave the request unlimited.
        cost: units a request spends, or a function of the scope returning them.
        name: the policy name; defaults to the route template, so each route has its own.
        algorithm: ``sliding_window``, ``fixed_window`` or ``gcra``.
        per_route: count per route and method; ``False`` shares one budget among every route
            that declares a limit with this name.
        limiter: the limiter to use instead of finding one (see the module docstring).
        headers: add ``RateLimit-Policy`` and ``RateLimit`` to responses. Without the
            middleware they are set on FastAPI's response, which an endpoint returning its own
            ``Response`` discards: install ``RateLimitMiddleware`` (``Bastion`` does) to keep them.

    Raises:
        ConfigurationError: for an invalid rate, algorithm or name.
    """
    if isinstance(rates, Limit):
        base = rates if name is None else rates.renamed(name)
    else:
        base = Limit(rates, name=name or "route", algorithm=algorithm, per_route=per_route)
    named_by_route = name is None and not isinstance(rates, Limit)
    by_route: dict[str, Limit] = {}
    key_function = key if key is not None else client_key
    explicit = limiter

    async def rate_limit(request: Request, response: Response) -> None:
        scope = request.scope
        context: RequestContext | None = scope.get(SCOPE_KEY)
        method: str = scope["method"]
        route = context.route if context is not None else None
        if route is None:
            route = getattr(scope.get("route"), "path", None)
        applied = base
        if named_by_route and route is not None:
            named = by_route.get(route)
            if named is None:
                named = by_route[route] = base.renamed(route)
            applied = named
        partition = key_function(scope)
        if partition is None:
            return
        spent = cost(scope) if callable(cost) else cost
        decision = await _limiter(explicit, request).decide(
            (Check(applied, partition, f"{method} {route}" if applied.per_route else "", spent),),
            method=method,
            route=route,
            principal=context.principal if context is not None else None,
        )
        if not decision.allowed:
            refusal = RateLimitUnavailable if decision.unavailable else RateLimitExceeded
            raise refusal(decision, headers=headers)
        if not headers:
            return
        decisions = scope.get(DECISIONS_SCOPE_KEY, _MISSING)
        if decisions is None:
            return  # the middleware adds no headers
        if decisions is not _MISSING:
            decisions.append(decision)
        elif LIMITER_SCOPE_KEY in scope:  # the middleware adds them: the first of its list
            scope[DECISIONS_SCOPE_KEY] = [decision]
        else:
            response.raw_headers.extend(decision_headers((decision,)))

    from fastapi import Depends  # the fastapi extra; the exceptions above need Starlette only

    return Depends(rate_limit)


def _limiter(explicit: RateLimiter | None, request: Request) -> RateLimiter:
    if explicit is not None:
        return explicit
    found: RateLimiter | None = request.scope.get(LIMITER_SCOPE_KEY)
    if found is not None:
        return found
    state = request.app.state
    found = getattr(state, APP_STATE_ATTRIBUTE, None)
    if found is None:
        found = RateLimiter()
        setattr(state, APP_STATE_ATTRIBUTE, found)
    return found
