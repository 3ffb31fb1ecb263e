"""``@rate_limit``: a limit declared on an endpoint and applied by ``RateLimitMiddleware``.

The decorator only records the limit on the endpoint function. The middleware finds it by the
route template of each request (from the app's route table, read once), before the framework
routes the request: a refused request costs no body parsing and no validation, and the headers
reach responses the endpoint builds itself. The order with the route decorator does not matter.

::

    @app.get("/search")
    @bastion.rate_limit("10/second; 300/hour")
    async def search(q: str) -> list[Hit]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bastion.exceptions import ConfigurationError
from bastion.ratelimit._rates import Algorithm, Limit

__all__ = ["DeclaredLimit", "declarations", "declared_limits", "rate_limit"]

RATE_LIMITS_ATTRIBUTE = "__bastion_rate_limits__"

F = TypeVar("F", bound=Callable[..., object])


class _Declarations:
    """How many endpoints declared a limit: with none, ``Bastion`` installs no rate-limit layer
    unless settings configure one."""

    count = 0


declarations = _Declarations()


@dataclass(frozen=True, slots=True)
class DeclaredLimit:
    """A limit an endpoint declared, and what each of its requests spends."""

    limit: Limit
    cost: int
    named: bool
    """Whether the declaration named its policy; if not, it is named after the route."""


def rate_limit(
    rates: str,
    /,
    *,
    name: str | None = None,
    cost: int = 1,
    algorithm: Algorithm = "sliding_window",
    per_route: bool = True,
) -> Callable[[F], F]:
    """Declare a rate limit on an endpoint, applied by ``RateLimitMiddleware`` (which ``Bastion``
    installs as soon as one endpoint declares a limit).

    It replaces, for its route, the middleware's ``rules`` and default ``rate``; its
    ``global_rate`` still applies, in the same atomic decision. Limits are keyed like the
    middleware's: by the principal, else the client address.

    Args:
        rates: the quotas: ``"10/second; 1000/hour"``.
        name: the policy name; by default the route (``GET /search``), so each route has its own.
        cost: units each request spends.
        algorithm: ``sliding_window``, ``fixed_window`` or ``gcra``.
        per_route: count per route and method; ``False`` shares one budget among every route
            declaring a limit with this ``name``.

    Raises:
        ConfigurationError: for an invalid rate, algorithm or cost (at decoration time).
    """
    value: object = cost  # from a caller that ignored the annotation, maybe
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"cost must be an integer >= 0, not {cost!r}")
    if not per_route and name is None:
        raise ConfigurationError("a limit shared by routes (per_route=False) needs a name")
    declared = DeclaredLimit(
        Limit(rates, name=name or "route", algorithm=algorithm, per_route=per_route),
        cost,
        named=name is not None,
    )

    def decorate(endpoint: F) -> F:
        existing: tuple[DeclaredLimit, ...] = getattr(endpoint, RATE_LIMITS_ATTRIBUTE, ())
        setattr(endpoint, RATE_LIMITS_ATTRIBUTE, (*existing, declared))
        declarations.count += 1
        return endpoint

    return decorate


def declared_limits(endpoint: object) -> tuple[DeclaredLimit, ...]:
    """The limits ``endpoint`` declared with ``rate_limit``, in declaration order."""
    found: tuple[DeclaredLimit, ...] = getattr(endpoint, RATE_LIMITS_ATTRIBUTE, ())
    return found
