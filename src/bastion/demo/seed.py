"""Deterministic seed data: 20 artists, 60 albums, 600 tracks, identical on every run.

Names are drawn from fixed word lists by a ``random.Random`` with a fixed seed (only ``choice``,
``sample`` and ``randint``, whose algorithms are stable across Python versions), so every database
seeded by this version holds the same catalog and tests and benchmarks can rely on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import cycle

from bastion.demo.models import Album, Artist, Track

__all__ = [
    "ALBUM_COUNT",
    "ARTIST_COUNT",
    "SEED_VERSION",
    "TRACK_COUNT",
    "SeedArtist",
    "catalog",
]

SEED_VERSION = "1"
"""Recorded in the database once seeded; a new version of the data gets a new number."""

_SEED = 1969


@dataclass(frozen=True, slots=True)
class SeedArtist:
    """An artist of the seed catalog and what the generated albums draw on."""

    name: str
    country: str
    formed_year: int
    genre: str


_ARTISTS = (
    SeedArtist("The Velvet Orchards", "GB", 1994, "Indie Rock"),
    SeedArtist("Marisol Vega", "ES", 2008, "Latin Pop"),
    SeedArtist("Northern Static", "CA", 2001, "Post-Rock"),
    SeedArtist("Kofi & The Lanterns", "GH", 1998, "Afrobeat"),
    SeedArtist("Ingrid Halvorsen", "NO", 2012, "Folk"),
    SeedArtist("Brass Meridian", "US", 1987, "Jazz"),
    SeedArtist("Neon Tidewater", "AU", 2015, "Synthwave"),
    SeedArtist("Los Caminos Rojos", "MX", 1979, "Rock"),
    SeedArtist("Yuki Tanabe Trio", "JP", 2005, "Jazz"),
    SeedArtist("Paper Lighthouse", "IE", 2010, "Indie Folk"),
    SeedArtist("Saint Ambrose", "FR", 1991, "Electronic"),
    SeedArtist("The Hollow Pines", "US", 1968, "Blues Rock"),
    SeedArtist("Amara Okafor", "NG", 2016, "R&B"),
    SeedArtist("Copperline", "NZ", 2003, "Alternative"),
    SeedArtist("Felix Brandt Ensemble", "DE", 1983, "Chamber Pop"),
    SeedArtist("Silver Harbour Radio", "GB", 1999, "Britpop"),
    SeedArtist("Lúcia Moreno", "BR", 1976, "Bossa Nova"),
    SeedArtist("Glass Coyote", "US", 2009, "Americana"),
    SeedArtist("Midnight Cartography", "SE", 2013, "Dream Pop"),
    SeedArtist("Orchestra of Small Hours", "IT", 1995, "Ambient"),
)

# Albums per artist and tracks per album vary, but their cycles average exactly 3 and 10.
_ALBUMS_PER_ARTIST = (3, 2, 4, 3)
_TRACKS_PER_ALBUM = (8, 9, 10, 11, 12)

ARTIST_COUNT = len(_ARTISTS)
"""Artists in the seed catalog."""
ALBUM_COUNT = 60
"""Albums in the seed catalog."""
TRACK_COUNT = 600
"""Tracks in the seed catalog."""

_ADJECTIVES = (
    "Amber", "Borrowed", "Broken", "Burning", "Copper", "Crooked", "Distant", "Electric",
    "Empty", "Faded", "Golden", "Hidden", "Hollow", "Last", "Little", "Lonesome", "Paper",
    "Quiet", "Restless", "Salt", "Silver", "Slow", "Static", "Sunday", "Velvet", "Wild",
)  # fmt: skip
_NOUNS = (
    "Anchor", "Atlas", "Avenue", "Border", "Bridge", "Canyon", "Compass", "Echo", "Ember",
    "Fever", "Garden", "Harbor", "Horizon", "Kingdom", "Lantern", "Meridian", "Mirror",
    "Orchard", "Parade", "Radio", "River", "Satellite", "Signal", "Summer", "Tide", "Window",
)  # fmt: skip
_PLACES = (
    "Lisbon", "Memphis", "Osaka", "Galway", "Marseille", "Accra", "Tromsø", "Valparaíso",
    "Tangier", "Montreal", "Havana", "Reykjavík",
)  # fmt: skip
_VERBS = ("Chasing", "Leaving", "Waiting for", "Dancing with", "Running from", "Dreaming of")
_ALBUM_TEMPLATES = (
    "{adj} {noun}",
    "The {noun}",
    "{noun} of {place}",
    "Songs for the {adj} {noun}",
    "{place} Sessions",
)
_TRACK_TEMPLATES = (
    "{adj} {noun}",
    "{verb} the {noun}",
    "{noun} Song",
    "Letters from {place}",
    "{adj} Hours",
    "Under the {adj} {noun}",
    "{noun} ({adj} Mix)",
    "Nights in {place}",
)


def _phrase(rng: random.Random, templates: tuple[str, ...]) -> str:
    return rng.choice(templates).format(
        adj=rng.choice(_ADJECTIVES),
        noun=rng.choice(_NOUNS),
        place=rng.choice(_PLACES),
        verb=rng.choice(_VERBS),
    )


def _unique_phrase(rng: random.Random, templates: tuple[str, ...], taken: set[str]) -> str:
    while (phrase := _phrase(rng, templates)) in taken:
        pass
    taken.add(phrase)
    return phrase


def catalog() -> list[Artist]:
    """Build the seed catalog as new ORM objects: artists holding their albums and tracks.

    Returns:
        ``ARTIST_COUNT`` artists with ``ALBUM_COUNT`` albums and ``TRACK_COUNT`` tracks in all,
        the same names, years and durations on every call.
    """
    rng = random.Random(_SEED)
    album_counts = cycle(_ALBUMS_PER_ARTIST)
    track_counts = cycle(_TRACKS_PER_ALBUM)
    artists = []
    for seed_artist in _ARTISTS:
        artist = Artist(
            name=seed_artist.name, country=seed_artist.country, formed_year=seed_artist.formed_year
        )
        album_count = next(album_counts)
        # Release years spread over the artist's career, in order, none after 2024.
        span = range(seed_artist.formed_year + 1, min(seed_artist.formed_year + 30, 2024) + 1)
        years = sorted(rng.sample(span, album_count))
        titles: set[str] = set()
        for year in years:
            album = Album(
                title=_unique_phrase(rng, _ALBUM_TEMPLATES, titles),
                year=year,
                genre=seed_artist.genre,
            )
            track_titles: set[str] = set()
            album.tracks = [
                Track(
                    number=number,
                    title=_unique_phrase(rng, _TRACK_TEMPLATES, track_titles),
                    duration_s=rng.randint(150, 420),
                )
                for number in range(1, next(track_counts) + 1)
            ]
            artist.albums.append(album)
        artists.append(artist)
    return artists
