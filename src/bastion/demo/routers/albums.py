"""``/albums``: list albums (optionally one artist's) and read one with its tracks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload, selectinload

from bastion.demo.models import MAX_ID, Album
from bastion.demo.routers.deps import PageDep, SessionDep, problem_responses
from bastion.demo.schemas import AlbumDetail, AlbumOut, Page

__all__ = ["router"]

router = APIRouter(prefix="/albums", tags=["albums"])

AlbumId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("", responses=problem_responses(422))
async def list_albums(
    session: SessionDep,
    page: PageDep,
    artist_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this artist's albums.")
    ] = None,
) -> Page[AlbumOut]:
    """List albums in the order they were added, optionally only one artist's.

    An artist that does not exist has no albums: the filter gives an empty page, not a 404.
    """
    query = select(Album)
    count = select(func.count()).select_from(Album)
    if artist_id is not None:
        query = query.where(Album.artist_id == artist_id)
        count = count.where(Album.artist_id == artist_id)
    total = await session.scalar(count)
    rows = await session.scalars(query.order_by(Album.id).limit(page.limit).offset(page.offset))
    return Page[AlbumOut](
        items=[AlbumOut.model_validate(row) for row in rows],
        total=total or 0,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{album_id}", responses=problem_responses(404, 422))
async def get_album(album_id: AlbumId, session: SessionDep) -> AlbumDetail:
    """Read one album with its artist and its tracks in order."""
    # Two queries whatever the track count: the album joined to its artist, then all its
    # tracks at once (selectinload), instead of one query per track.
    album = await session.scalar(
        select(Album)
        .where(Album.id == album_id)
        .options(joinedload(Album.artist), selectinload(Album.tracks))
    )
    if album is None:
        raise HTTPException(404, detail=f"Album {album_id} does not exist.")
    return AlbumDetail.model_validate(album)
