"""``timeout()``: a route's own timeout, declared as a FastAPI dependency.

::

    @app.get("/reports/{id}", dependencies=[timeout(30)])
    async def report(id: int): ...

The dependency does not time anything itself: it tells ``DeadlineMiddleware`` (installed by
``Bastion``) the route's timeout, which replaces the default and the settings' rules for the
request. FastAPI runs a route's dependencies before its handler, in the request's task, inside
the middleware's cancel scope, so the new deadline covers the handler. The timeout still counts
from the request's arrival.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from starlette.requests import Request

from bastion.protection._deadline import DEADLINE_SCOPE_KEY, declare_route_timeout, seconds

__all__ = ["timeout"]

logger = logging.getLogger("bastion.protection")


class _Warned:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


_warned = _Warned()


def timeout(timeout_s: float | timedelta, /) -> Any:
    """A FastAPI dependency giving the routes that declare it their own timeout.

    Use it in ``dependencies=[timeout(30)]`` (on a route or a router). With several on one
    route, the last one FastAPI runs wins (router dependencies run before the route's own).

    Args:
        timeout_s: seconds (or a ``timedelta``) from the request's arrival to its deadline.

    Raises:
        ConfigurationError: when the timeout is not a positive, finite number of seconds.
    """
    value = seconds(timeout_s)
    declare_route_timeout()

    async def route_timeout(request: Request) -> None:
        deadline = request.scope.get(DEADLINE_SCOPE_KEY)
        if deadline is not None:
            deadline.set_timeout(value)
        elif not _warned.done:
            _warned.done = True
            logger.warning(
                "timeout(%g) on %s has no effect: DeadlineMiddleware is not installed "
                "(Bastion installs it; otherwise add it with app.add_middleware)",
                value,
                request.scope.get("path", "?"),
            )

    from fastapi import Depends  # the fastapi extra: imported only when a timeout is declared

    return Depends(route_timeout)
