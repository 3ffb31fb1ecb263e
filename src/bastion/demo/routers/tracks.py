"""``/tracks``: list tracks (optionally one album's) and read one.

Both are served by bastion's response cache; adding a track (``POST /albums/{id}/tracks``) purges
the ``tracks`` tag.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import func, select

from bastion.cache import cache
from bastion.demo.models import MAX_ID, Track
from bastion.demo.routers.deps import PageDep, SessionDep, problem_responses
from bastion.demo.schemas import Page, TrackOut

__all__ = ["router"]

router = APIRouter(prefix="/tracks", tags=["tracks"])

TrackId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("", responses=problem_responses(422))
@cache(ttl=30, stale_while_revalidate=30, tags=["tracks"])
async def list_tracks(
    session: SessionDep,
    page: PageDep,
    album_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this album's tracks.")
    ] = None,
) -> Page[TrackOut]:
    """List tracks by album and position, optionally only one album's."""
    query = select(Track)
    count = select(func.count()).select_from(Track)
    if album_id is not None:
        query = query.where(Track.album_id == album_id)
        count = count.where(Track.album_id == album_id)
    total = await session.scalar(count)
    rows = await session.scalars(
        query.order_by(Track.album_id, Track.number).limit(page.limit).offset(page.offset)
    )
    return Page[TrackOut](
        items=[TrackOut.model_validate(row) for row in rows],
        total=total or 0,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{track_id}", responses=problem_responses(404, 422))
@cache(ttl=300, tags=["tracks"])
async def get_track(track_id: TrackId, session: SessionDep) -> TrackOut:
    """Read one track."""
    track = await session.get(Track, track_id)
    if track is None:
        raise HTTPException(404, detail=f"Track {track_id} does not exist.")
    return TrackOut.model_validate(track)
