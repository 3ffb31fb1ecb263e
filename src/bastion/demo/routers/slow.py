"""``/slow``: an endpoint that takes as long as asked, to watch deadlines and load shedding.

``GET /slow?seconds=1`` sleeps for a second. The route declares a 2-second timeout, so
``/slow?seconds=5`` is cancelled and answered ``504``. It has the lowest priority of the demo's
load shedding: under a burst (``hey -c 100 'http://127.0.0.1:8000/slow?seconds=1'``) the
catalog's own routes are admitted first, and what does not fit is shed with ``503`` and
``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from pydantic import BaseModel

from bastion.demo.routers.deps import problem_responses
from bastion.protection import time_left, timeout

__all__ = ["SLOW_TIMEOUT_S", "Slept", "router"]

SLOW_TIMEOUT_S = 2.0
"""The route's own timeout, from the request's arrival."""

router = APIRouter(tags=["load"])


class Slept(BaseModel):
    """What ``/slow`` did."""

    slept_s: float
    """Seconds it slept."""
    time_left_s: float | None
    """Seconds that were left before the request's deadline when it answered."""


@router.get(
    "/slow",
    responses=problem_responses(422, 503, 504),
    dependencies=[timeout(SLOW_TIMEOUT_S)],
)
async def slow(
    seconds: Annotated[float, Query(ge=0, le=30, description="Seconds to sleep.")] = 1.0,
) -> Slept:
    """Sleep for ``seconds``, then answer; past 2 seconds the request is cancelled (504)."""
    await anyio.sleep(seconds)
    return Slept(slept_s=seconds, time_left_s=time_left())
