"""HTTP pieces shared by the middleware and the FastAPI dependency: keys, headers, problems."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bastion._asgi import retry_after
from bastion.context import SCOPE_KEY, RequestContext
from bastion.problem import (
    TEMPORARY_REDUCED_CAPACITY,
    TEMPORARY_REDUCED_CAPACITY_TITLE,
    send_problem,
)
from bastion.ratelimit._limiter import Decision
from bastion.types import Scope, Send

__all__ = [
    "DECISIONS_SCOPE_KEY",
    "KeyFunc",
    "LIMITER_SCOPE_KEY",
    "QUOTA_EXCEEDED",
    "TEMPORARY_REDUCED_CAPACITY",
    "client_key",
    "decision_headers",
    "refusal_headers",
    "retry_after",
    "send_refusal",
]

LIMITER_SCOPE_KEY = "bastion.ratelimiter"
"""Key of the ``RateLimiter`` in the ASGI scope, set by ``RateLimitMiddleware``; the ``limit()``
dependency finds its limiter there."""

DECISIONS_SCOPE_KEY = "bastion.ratelimit.decisions"
"""Key of the list of admitted ``Decision`` objects of ``limit()`` dependencies whose
``RateLimit`` headers the middleware adds to the response after its own. The first dependency
creates it; the middleware sets ``None`` here when it adds no headers."""

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""Problem type of a 429 (draft-ietf-httpapi-ratelimit-headers §5.1)."""

KeyFunc = Callable[[Scope], str | None]
"""Returns whose budget a request spends (any string), or ``None`` to not limit the request."""


def client_key(scope: Scope) -> str | None:
    """The default key: ``"p:<principal>"`` once authentication set one, else ``"ip:<client>"``.

    The client address is ``RequestContext.client``, which honours ``X-Forwarded-For`` only from
    trusted proxies. Without a request context it is the socket peer. Requests without any
    address (a Unix socket without a proxy in front) share ``"ip:unknown"``.
    """
    context: RequestContext | None = scope.get(SCOPE_KEY)
    if context is not None:
        principal = context.principal
        if principal is not None:
            return "p:" + principal
        client = context.client
    else:
        peer: Any = scope.get("client")
        client = peer[0] if peer else None
    return "ip:unknown" if client is None else "ip:" + client


def decision_headers(decisions: Iterable[Decision]) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` and ``RateLimit`` for every quota of ``decisions`` (none without)."""
    encoded = []
    for decision in decisions:
        values = decision.encoded_headers()
        if values is not None:
            encoded.append(values)
    if not encoded:
        return []
    if len(encoded) == 1:
        policy, state = encoded[0]
        return [(b"ratelimit-policy", policy), (b"ratelimit", state)]
    return [
        (b"ratelimit-policy", b", ".join([policy for policy, _ in encoded])),
        (b"ratelimit", b", ".join([state for _, state in encoded])),
    ]


def refusal_headers(decision: Decision, *, headers: bool = True) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` plus, when ``headers``, the decision's ``RateLimit`` fields."""
    extra = [(b"retry-after", str(retry_after(decision.retry_after_s)).encode())]
    if headers:
        extra.extend(decision_headers((decision,)))
    return extra


async def send_refusal(
    scope: Scope, send: Send, decision: Decision, *, headers: bool = True
) -> None:
    """Answer a refused request: 429 ``quota-exceeded``, or 503 when the store failed closed."""
    wait = retry_after(decision.retry_after_s)
    if decision.unavailable:
        await send_problem(
            scope,
            send,
            503,
            type_=TEMPORARY_REDUCED_CAPACITY,
            title=TEMPORARY_REDUCED_CAPACITY_TITLE,
            detail=f"Rate limits cannot be checked right now; retry in {wait} s.",
            headers=refusal_headers(decision, headers=headers),
            extensions={"violated-policies": list(decision.violated)},
        )
        return
    await send_problem(
        scope,
        send,
        429,
        type_=QUOTA_EXCEEDED,
        title="Request cannot be satisfied as assigned quota has been exceeded",
        detail=f"Too many requests; retry in {wait} s.",
        headers=refusal_headers(decision, headers=headers),
        extensions={"violated-policies": list(decision.violated)},
    )
