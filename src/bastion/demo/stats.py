"""Artist statistics: an aggregate query cached with ``@cached`` (bastion's function cache).

The response cache keeps whole responses; ``@cached`` keeps the result of a function, whatever
calls it. ``artist_stats`` runs three aggregate queries; its result is cached per artist for five
minutes (the database session is left out of the key: FastAPI injects a new one per request).
It is tagged ``albums`` and ``tracks``, the tags the album and track writes purge, so a new album
or track shows in the statistics at once; in Redis when ``BASTION_REDIS_URL`` is set, so every
worker shares one entry per artist.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bastion.cache import cached
from bastion.demo.models import Album, Track

__all__ = ["ArtistStats", "artist_stats"]


class ArtistStats(BaseModel):
    """Counts over an artist's catalog."""

    artist_id: int
    albums: int
    tracks: int
    total_duration_s: int
    genres: list[str]


@cached(ttl=300, tags=["albums", "tracks", "artist:{artist_id}"], name="demo.artist_stats")
async def artist_stats(artist_id: int, session: AsyncSession) -> ArtistStats:
    """Count an artist's albums, tracks and playing time (cached per artist)."""
    genres = await session.scalars(
        select(Album.genre).where(Album.artist_id == artist_id).distinct().order_by(Album.genre)
    )
    albums = await session.scalar(select(func.count(Album.id)).where(Album.artist_id == artist_id))
    tracks, duration = (
        await session.execute(
            select(func.count(Track.id), func.coalesce(func.sum(Track.duration_s), 0))
            .join(Album, Track.album_id == Album.id)
            .where(Album.artist_id == artist_id)
        )
    ).one()
    return ArtistStats(
        artist_id=artist_id,
        albums=albums or 0,
        tracks=tracks,
        total_duration_s=duration,
        genres=list(genres),
    )
