"""Traffic protection: abuse guard, body limit, security headers, load shedding and deadlines.

FastAPI::

    from bastion.protection import Bans, GuardMiddleware, SecurityHeaders

    app.add_middleware(
        GuardMiddleware,
        max_body_bytes=1024 * 1024,
        body_limits={"POST /uploads/*": 100 * 1024 * 1024},
        bans=Bans(auth_failures=10, window_s=60),
        security_headers=SecurityHeaders(hsts_max_age_s=31_536_000),
    )

- ``GuardMiddleware`` (DESIGN §4 layer 5) refuses denied networks and banned clients (403),
  paths with NUL bytes, ``..`` segments or invalid UTF-8 (400) and bodies over their limit (413,
  counted while streaming), and adds security headers the app did not set.
- ``Bans`` bans clients for a growing time after bursts of auth failures or 4xx responses; on
  Redis every worker learns a ban within milliseconds, and a clean request never waits for it.
- ``SheddingMiddleware`` (layer 6) runs at most ``max_concurrent`` requests per worker, queues
  the next ones by priority and sheds the rest with 503 and ``Retry-After``; ``Gradient2`` and
  ``AIMD`` move the limit from measured latency.
- ``DeadlineMiddleware`` (layer 7) cancels requests past their timeout (504, or a cut-off
  response once it started); ``timeout()`` declares a route's own, ``time_left()`` reads it.

See ``docs/protection.md`` and ``docs/shedding.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.protection._adaptive import AIMD, AdaptiveLimit, Gradient2, LimitAlgorithm
from bastion.protection._bans import Bans, OnBanStoreError
from bastion.protection._deadline import (
    DEADLINE_SCOPE_KEY,
    DeadlineMiddleware,
    DeadlineRule,
    RequestDeadline,
    deadline_layer,
    time_left,
)
from bastion.protection._guard import DEFAULT_MAX_BODY_BYTES, GuardMiddleware
from bastion.protection._headers import SecurityHeaders
from bastion.protection._networks import NetworkList, ban_key
from bastion.protection._paths import PathProblem, path_problem
from bastion.protection._priority import Priorities, PriorityFunc, PriorityRule
from bastion.protection._shedding import (
    TEMPORARY_REDUCED_CAPACITY,
    ConcurrencyLimiter,
    QueueOrder,
    SheddingMiddleware,
)

if TYPE_CHECKING:
    from bastion.protection._deadline_fastapi import timeout

__all__ = [
    "AIMD",
    "AdaptiveLimit",
    "Bans",
    "ConcurrencyLimiter",
    "DEADLINE_SCOPE_KEY",
    "DEFAULT_MAX_BODY_BYTES",
    "DeadlineMiddleware",
    "DeadlineRule",
    "Gradient2",
    "GuardMiddleware",
    "LimitAlgorithm",
    "NetworkList",
    "OnBanStoreError",
    "PathProblem",
    "Priorities",
    "PriorityFunc",
    "PriorityRule",
    "QueueOrder",
    "RequestDeadline",
    "SecurityHeaders",
    "SheddingMiddleware",
    "TEMPORARY_REDUCED_CAPACITY",
    "ban_key",
    "deadline_layer",
    "path_problem",
    "time_left",
    "timeout",
]


def __getattr__(name: str) -> object:
    # timeout() is a FastAPI dependency: import Starlette and FastAPI on first use only.
    if name == "timeout":
        from bastion.protection._deadline_fastapi import timeout

        return timeout
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
