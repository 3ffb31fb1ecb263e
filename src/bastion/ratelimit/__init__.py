"""Rate limiting: fixed window, sliding window and GCRA, on memory or Redis, with IETF headers.

FastAPI::

    from bastion.ratelimit import RateLimitMiddleware, limit

    app.add_middleware(RateLimitMiddleware, rate="100/minute")

    @app.get("/search", dependencies=[limit("10/second; 500/hour")])
    async def search(q: str): ...

- ``RateLimiter`` decides: several quotas in one atomic step (one ``EVALSHA`` on Redis), refused
  requests charged nothing, and an explicit policy for store outages.
- ``RateLimitMiddleware`` limits by route and path pattern before the framework routes, and adds
  ``RateLimit-Policy``/``RateLimit`` headers; refusals are problem+json 429 with ``Retry-After``.
- ``limit()`` is the same as a FastAPI dependency on one route (imports FastAPI when used).

See ``docs/ratelimit.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.ratelimit._declare import rate_limit
from bastion.ratelimit._http import (
    DECISIONS_SCOPE_KEY,
    LIMITER_SCOPE_KEY,
    QUOTA_EXCEEDED,
    TEMPORARY_REDUCED_CAPACITY,
    KeyFunc,
    client_key,
)
from bastion.ratelimit._limiter import (
    Check,
    Decision,
    OnStoreError,
    QuotaState,
    RateLimitBackend,
    RateLimiter,
)
from bastion.ratelimit._memory import MemoryBackend
from bastion.ratelimit._middleware import RateLimitMiddleware, Rule, ratelimit_layer
from bastion.ratelimit._rates import Algorithm, Limit, Quota, parse_rates

if TYPE_CHECKING:
    from bastion.ratelimit._fastapi import (
        RateLimitExceeded,
        RateLimitRefused,
        RateLimitUnavailable,
        limit,
        rate_limit_problem,
    )

__all__ = [
    "Algorithm",
    "Check",
    "DECISIONS_SCOPE_KEY",
    "Decision",
    "KeyFunc",
    "LIMITER_SCOPE_KEY",
    "Limit",
    "MemoryBackend",
    "OnStoreError",
    "QUOTA_EXCEEDED",
    "Quota",
    "QuotaState",
    "RateLimitBackend",
    "RateLimitExceeded",
    "RateLimitMiddleware",
    "RateLimitRefused",
    "RateLimitUnavailable",
    "RateLimiter",
    "Rule",
    "TEMPORARY_REDUCED_CAPACITY",
    "client_key",
    "limit",
    "parse_rates",
    "rate_limit",
    "rate_limit_problem",
    "ratelimit_layer",
]

_FASTAPI_NAMES = frozenset(
    {"RateLimitExceeded", "RateLimitRefused", "RateLimitUnavailable", "limit", "rate_limit_problem"}
)


def __getattr__(name: str) -> object:
    # The FastAPI dependency needs the fastapi extra; import it on first use only.
    if name in _FASTAPI_NAMES:
        from bastion.ratelimit import _fastapi

        return getattr(_fastapi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
