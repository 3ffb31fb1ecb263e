"""``/albums``: list albums (optionally one artist's), read one with its tracks, add albums and
tracks.

Reads are served by bastion's response cache (``@cache``): the listing under tag ``albums``, each
album under ``albums`` and ``album:{album_id}`` (a new album must also clear a cached 404 for its
id). Writes purge what they change (``@invalidates``) before their response is sent, so a client
reading right after its write sees it: adding a track purges only its album.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload

from bastion.auth import require
from bastion.cache import cache, invalidates
from bastion.demo.keys import WRITE_SCOPE
from bastion.demo.models import MAX_ID, Album, Artist, Track
from bastion.demo.routers.deps import PageDep, SessionDep, problem_responses
from bastion.demo.schemas import AlbumCreate, AlbumDetail, AlbumOut, Page, TrackCreate, TrackOut
from bastion.ratelimit import limit

__all__ = ["router"]

router = APIRouter(prefix="/albums", tags=["albums"])

AlbumId = Annotated[int, Path(ge=1, le=MAX_ID)]


# Writes need an API key with scope catalog:write and are limited per key, as artist writes are.
_WRITES = [require([WRITE_SCOPE]), limit("10/minute; 100/hour", name="album-writes")]


@router.get("", responses=problem_responses(422))
@cache(ttl=30, stale_while_revalidate=30, tags=["albums"])
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
@cache(
    ttl=60,
    stale_while_revalidate=60,
    stale_if_error=600,
    tags=["albums", "album:{album_id}"],
)
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


@router.post(
    "", status_code=201, responses=problem_responses(401, 403, 422, 429), dependencies=_WRITES
)
@invalidates("albums")
async def create_album(
    body: AlbumCreate, session: SessionDep, request: Request, response: Response
) -> AlbumOut:
    """Add an album by an existing artist (422 if there is none). Purges the album listings."""
    if await session.get(Artist, body.artist_id) is None:
        raise HTTPException(422, detail=f"Artist {body.artist_id} does not exist.")
    album = Album(artist_id=body.artist_id, title=body.title, year=body.year, genre=body.genre)
    session.add(album)
    await session.commit()
    response.headers["Location"] = str(request.url_for("get_album", album_id=album.id))
    return AlbumOut.model_validate(album)


@router.post(
    "/{album_id}/tracks",
    status_code=201,
    responses=problem_responses(401, 403, 404, 409, 422, 429),
    dependencies=_WRITES,
)
@invalidates("album:{album_id}", "tracks")
async def add_track(album_id: AlbumId, body: TrackCreate, session: SessionDep) -> TrackOut:
    """Append a track to an album. Purges that album and the track listings, nothing else."""
    if await session.get(Album, album_id) is None:
        raise HTTPException(404, detail=f"Album {album_id} does not exist.")
    last = await session.scalar(select(func.max(Track.number)).where(Track.album_id == album_id))
    track = Track(
        album_id=album_id, number=(last or 0) + 1, title=body.title, duration_s=body.duration_s
    )
    session.add(track)
    try:
        await session.commit()
    except IntegrityError:
        # Two concurrent appends took the same number; the unique index refused the second.
        await session.rollback()
        raise HTTPException(
            409, detail="Another track was added at the same time; retry."
        ) from None
    return TrackOut.model_validate(track)
