"""``/artists``: list, read and create artists, and an artist's statistics (``@cached``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bastion.auth import require
from bastion.demo.keys import WRITE_SCOPE
from bastion.demo.models import MAX_ID, Artist
from bastion.demo.routers.deps import PageDep, SessionDep, problem_responses
from bastion.demo.schemas import ArtistCreate, ArtistOut, Page
from bastion.demo.stats import ArtistStats, artist_stats
from bastion.ratelimit import limit, rate_limit

__all__ = ["router"]

router = APIRouter(prefix="/artists", tags=["artists"])

ArtistId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("", responses=problem_responses(422))
async def list_artists(session: SessionDep, page: PageDep) -> Page[ArtistOut]:
    """List artists in the order they were added."""
    total = await session.scalar(select(func.count()).select_from(Artist))
    rows = await session.scalars(
        select(Artist).order_by(Artist.id).limit(page.limit).offset(page.offset)
    )
    return Page[ArtistOut](
        items=[ArtistOut.model_validate(row) for row in rows],
        total=total or 0,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{artist_id}", responses=problem_responses(404, 422))
async def get_artist(artist_id: ArtistId, session: SessionDep) -> ArtistOut:
    """Read one artist."""
    artist = await session.get(Artist, artist_id)
    if artist is None:
        raise HTTPException(404, detail=f"Artist {artist_id} does not exist.")
    return ArtistOut.model_validate(artist)


@router.get("/{artist_id}/stats", responses=problem_responses(404, 422))
@rate_limit("60/minute")  # per client, decided by bastion's rate-limit layer before routing
async def get_artist_stats(artist_id: ArtistId, session: SessionDep) -> ArtistStats:
    """Album and track counts of an artist, kept by bastion's function cache (``@cached``)."""
    if await session.get(Artist, artist_id) is None:
        raise HTTPException(404, detail=f"Artist {artist_id} does not exist.")
    return await artist_stats(artist_id, session)


@router.post(
    "",
    status_code=201,
    responses=problem_responses(401, 403, 409, 422, 429),
    # Writes need an API key with scope catalog:write (the demo prints one). They are limited
    # per key (authentication comes first and sets the principal the limit keys on), through
    # the limiter Bastion built: Redis-wide when BASTION_REDIS_URL is set.
    dependencies=[require([WRITE_SCOPE]), limit("10/minute; 100/hour", name="artist-writes")],
)
async def create_artist(
    body: ArtistCreate, session: SessionDep, request: Request, response: Response
) -> ArtistOut:
    """Add an artist. A name that matches an existing artist's, ignoring case, is a 409."""
    artist = Artist(name=body.name, country=body.country, formed_year=body.formed_year)
    session.add(artist)
    try:
        await session.commit()
    except IntegrityError:
        # The unique index decides, not a read beforehand: two concurrent requests (or two
        # workers) creating the same name cannot both pass a check-then-insert.
        await session.rollback()
        detail = f'An artist named "{body.name}" already exists.'
        raise HTTPException(409, detail=detail) from None
    response.headers["Location"] = str(request.url_for("get_artist", artist_id=artist.id))
    return ArtistOut.model_validate(artist)
