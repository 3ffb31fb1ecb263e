"""Dependencies and declarations shared by the routers: the session, pagination, id bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from bastion.demo.models import MAX_ID
from bastion.problem import PROBLEM_CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "PageDep",
    "Pagination",
    "SessionDep",
    "problem_responses",
]

DEFAULT_LIMIT = 20
"""Items per page when the client does not say."""
MAX_LIMIT = 100
"""Most items one page may hold: a client cannot ask for the whole table at once."""
MAX_OFFSET = MAX_ID
"""No list holds more rows than there are ids; larger offsets would overflow the driver."""


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.database.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]
"""A database session for the request, closed when the response is done."""


@dataclass(frozen=True, slots=True)
class Pagination:
    """Which slice of a list to return."""

    limit: int
    offset: int


def _pagination(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> Pagination:
    return Pagination(limit=limit, offset=offset)


PageDep = Annotated[Pagination, Depends(_pagination)]
"""Validated ``limit``/``offset`` query parameters."""


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` saying that ``statuses`` answer with RFC 9457 problem details."""
    return {
        status: {
            "description": "Problem details (RFC 9457).",
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"type": "object"}}},
        }
        for status in statuses
    }
