"""What the API accepts and returns: pydantic models, separate from the tables they come from."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlbumCreate",
    "AlbumDetail",
    "AlbumOut",
    "ArtistCreate",
    "ArtistOut",
    "Page",
    "TrackCreate",
    "TrackOut",
]

ItemT = TypeVar("ItemT")


class _Out(BaseModel):
    # Built from ORM objects inside the session (``model_validate(row)``), never lazily later.
    model_config = ConfigDict(from_attributes=True, frozen=True)


class ArtistOut(_Out):
    """An artist."""

    id: int
    name: str
    country: str | None = Field(description="ISO 3166-1 alpha-2 country code.")
    formed_year: int | None


class ArtistCreate(BaseModel):
    """A new artist. The name must not match an existing artist's, ignoring case."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, Field(min_length=1, max_length=200, examples=["Kofi & The Lanterns"])]
    country: Annotated[
        str | None,
        Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code.", examples=["GH"]),
    ] = None
    formed_year: Annotated[int | None, Field(ge=1000, le=2100, examples=[1998])] = None


class TrackOut(_Out):
    """A track of an album."""

    id: int
    album_id: int
    number: int = Field(description="Position on the album, from 1.")
    title: str
    duration_s: int = Field(description="Length in seconds.")


class AlbumOut(_Out):
    """An album, without its tracks."""

    id: int
    artist_id: int
    title: str
    year: int
    genre: str


class AlbumCreate(BaseModel):
    """A new album by an existing artist."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    artist_id: Annotated[int, Field(ge=1, examples=[1])]
    title: Annotated[str, Field(min_length=1, max_length=200, examples=["Night Market"])]
    year: Annotated[int, Field(ge=1000, le=2100, examples=[2024])]
    genre: Annotated[str, Field(min_length=1, max_length=50, examples=["highlife"])]


class TrackCreate(BaseModel):
    """A new track, appended to an album (its number is the next free one)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Annotated[str, Field(min_length=1, max_length=200, examples=["Lantern Song"])]
    duration_s: Annotated[int, Field(ge=1, le=24 * 3600, examples=[245])]


class AlbumDetail(AlbumOut):
    """An album with its artist and its tracks in order."""

    artist: ArtistOut
    tracks: list[TrackOut]


class Page(BaseModel, Generic[ItemT]):
    """One page of a list, with the total the list holds."""

    items: list[ItemT]
    total: int = Field(description="Items in the whole list, not just this page.")
    limit: int
    offset: int
