"""The catalog's tables: artists, their albums, the albums' tracks.

Ids are ``Integer`` everywhere: on SQLite that makes them aliases of the rowid (a ``BIGINT``
primary key would not be), and on PostgreSQL it is ``int4``, so the API bounds ids to
``MAX_ID`` and an absurd id is a 422, never a driver overflow turned 500.

Playlists (a playlist and its ordered tracks) come next; they will reference ``tracks.id``.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, MetaData, String, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["MAX_ID", "Album", "Artist", "Base", "DemoMeta", "Track"]

MAX_ID = 2**31 - 1
"""Largest id any table can hold (PostgreSQL ``int4``); the API rejects larger ids with 422."""

# Deterministic constraint names, so a later migration can name what it alters or drops.
_NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the demo's models."""

    metadata = MetaData(naming_convention=_NAMING_CONVENTION)


class Artist(Base):
    """A performer: a band or a person. Names are unique, ignoring case."""

    __tablename__ = "artists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    formed_year: Mapped[int | None]

    albums: Mapped[list[Album]] = relationship(
        back_populates="artist",
        order_by="(Album.year, Album.id)",
        cascade="all, delete-orphan",
    )


# "Kofi & The Lanterns" and "kofi & the lanterns" are one artist; an expression index enforces it
# in the database, so two workers inserting at once cannot both succeed.
Index("uq_artists_name_lower", func.lower(Artist.name), unique=True)


class Album(Base):
    """A release by one artist."""

    __tablename__ = "albums"

    id: Mapped[int] = mapped_column(primary_key=True)
    artist_id: Mapped[int] = mapped_column(ForeignKey("artists.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    year: Mapped[int]
    genre: Mapped[str] = mapped_column(String(50))

    artist: Mapped[Artist] = relationship(back_populates="albums")
    tracks: Mapped[list[Track]] = relationship(
        back_populates="album",
        order_by="Track.number",
        cascade="all, delete-orphan",
    )


class Track(Base):
    """One track of an album, numbered from 1."""

    __tablename__ = "tracks"
    __table_args__ = (UniqueConstraint("album_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # No separate index on album_id: the unique (album_id, number) index leads with it.
    album_id: Mapped[int] = mapped_column(ForeignKey("albums.id", ondelete="CASCADE"))
    number: Mapped[int]
    title: Mapped[str] = mapped_column(String(200))
    duration_s: Mapped[int]

    album: Mapped[Album] = relationship(back_populates="tracks")


class DemoMeta(Base):
    """Facts about the database itself, such as which seed version it holds."""

    __tablename__ = "demo_meta"

    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
