"""The demo music catalog: endpoints, problems, pagination, and its database under many workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import event, func, select, text

from bastion.demo import seed
from bastion.demo.db import DEFAULT_DATABASE_URL, Database, async_database_url
from bastion.demo.models import Album, Artist, DemoMeta, Track
from bastion.problem import PROBLEM_CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import httpx
    from fastapi import FastAPI

pytestmark = pytest.mark.anyio


def problem(response: httpx.Response) -> dict[str, Any]:
    """The problem+json body of ``response`` (failing if it is not one)."""
    assert PROBLEM_CONTENT_TYPE == response.headers["content-type"]
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------------------------------- reads


async def test_list_artists_returns_the_first_page_and_the_total(client: httpx.AsyncClient) -> None:
    """GET /artists pages the seeded artists, 20 at a time by default, with the exact total."""
    response = await client.get("/artists")
    assert 200 == response.status_code
    page = response.json()
    assert (seed.ARTIST_COUNT, 20, 0) == (page["total"], page["limit"], page["offset"])
    assert list(range(1, 21)) == [artist["id"] for artist in page["items"]]
    first = {"id": 1, "name": "The Velvet Orchards", "country": "GB", "formed_year": 1994}
    assert first == page["items"][0]


async def test_limit_and_offset_select_a_slice(client: httpx.AsyncClient) -> None:
    """limit/offset return that slice; an offset past the end is an empty page, not an error."""
    middle = (await client.get("/artists", params={"limit": 5, "offset": 15})).json()
    past_end = (await client.get("/artists", params={"offset": 500})).json()
    assert [16, 17, 18, 19, 20] == [artist["id"] for artist in middle["items"]]
    assert ([], seed.ARTIST_COUNT) == (past_end["items"], past_end["total"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 2**31}, "offset"),
    ],
)
async def test_pagination_out_of_bounds_is_a_422_problem(
    client: httpx.AsyncClient, query: dict[str, Any], field: str
) -> None:
    """limit outside 1..100 or a negative or absurd offset answers 422 naming the field."""
    response = await client.get("/albums", params=query)
    assert 422 == response.status_code
    body = problem(response)
    assert [["query", field]] == [error["loc"] for error in body["errors"]]
    assert response.headers["x-request-id"] == body["request_id"]


async def test_unknown_id_is_a_404_problem_with_the_request_id(client: httpx.AsyncClient) -> None:
    """An id that does not exist answers 404 problem+json carrying the response's request id."""
    for path, detail in [
        ("/artists/9999", "Artist 9999 does not exist."),
        ("/albums/9999", "Album 9999 does not exist."),
        ("/tracks/9999", "Track 9999 does not exist."),
    ]:
        response = await client.get(path)
        body = problem(response)
        assert (404, 404, detail) == (response.status_code, body["status"], body["detail"])
        assert response.headers["x-request-id"] == body["request_id"]


async def test_an_id_beyond_the_column_range_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    """Ids past int4 are rejected by validation before they can overflow the driver."""
    response = await client.get(f"/artists/{10**20}")
    assert 422 == response.status_code
    assert [["path", "artist_id"]] == [error["loc"] for error in problem(response)["errors"]]


async def test_an_incoming_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    """A valid X-Request-ID from the client comes back on the response, errors included."""
    ok = await client.get("/artists/1", headers={"X-Request-ID": "catalog-test-1"})
    missing = await client.get("/artists/0", headers={"X-Request-ID": "catalog-test-2"})
    assert "catalog-test-1" == ok.headers["x-request-id"]
    assert ("catalog-test-2", 422) == (missing.headers["x-request-id"], missing.status_code)


async def test_albums_filter_by_artist(client: httpx.AsyncClient) -> None:
    """GET /albums?artist_id= lists only that artist's albums, with their own total."""
    page = (await client.get("/albums", params={"artist_id": 3})).json()
    everything = (await client.get("/albums", params={"limit": 1})).json()
    assert 4 == page["total"]
    assert {3} == {album["artist_id"] for album in page["items"]}
    assert seed.ALBUM_COUNT == everything["total"]


async def test_album_detail_has_artist_and_ordered_tracks_in_two_queries(
    client: httpx.AsyncClient, demo_app: FastAPI
) -> None:
    """GET /albums/{id} returns the artist and every track in order, without N+1 queries."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = demo_app.state.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = await client.get("/albums/1")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    album = response.json()
    assert 200 == response.status_code
    assert ("The Velvet Orchards", 1) == (album["artist"]["name"], album["artist_id"])
    assert list(range(1, 9)) == [track["number"] for track in album["tracks"]]
    assert 2 == len(statements)


async def test_get_track(client: httpx.AsyncClient) -> None:
    """GET /tracks/{id} returns the track with its album and position."""
    track = (await client.get("/tracks/9")).json()
    assert (9, 2, 1) == (track["id"], track["album_id"], track["number"])
    assert 150 <= track["duration_s"] <= 420


async def test_the_root_redirects_to_the_api_docs(client: httpx.AsyncClient) -> None:
    """GET / points a newcomer at the interactive docs."""
    response = await client.get("/")
    assert (307, "docs") == (response.status_code, response.headers["location"])
    assert 200 == (await client.get("/docs")).status_code
    schema = (await client.get("/openapi.json")).json()
    assert {"/artists", "/artists/{artist_id}", "/albums", "/albums/{album_id}"} <= set(
        schema["paths"]
    )


async def test_the_ops_endpoints_are_served(client: httpx.AsyncClient) -> None:
    """bastion's ops endpoints answer next to the catalog."""
    live = await client.get("/_bastion/health/live")
    ready = await client.get("/_bastion/health/ready")
    assert (200, {"status": "pass", "health": "UP"}) == (live.status_code, live.json())
    assert (200, "UP") == (ready.status_code, ready.json()["health"])


# --------------------------------------------------------------------------------------- writes


async def test_create_artist_answers_201_with_location(client: httpx.AsyncClient) -> None:
    """POST /artists creates the artist (name trimmed) and points at it."""
    response = await client.post(
        "/artists", json={"name": "  Tin Lantern Choir ", "country": "FI", "formed_year": 2019}
    )
    created = response.json()
    assert 201 == response.status_code
    assert "Tin Lantern Choir" == created["name"]
    assert f"http://test/artists/{created['id']}" == response.headers["location"]
    assert created == (await client.get(f"/artists/{created['id']}")).json()
    assert seed.ARTIST_COUNT + 1 == (await client.get("/artists")).json()["total"]


async def test_duplicate_artist_name_is_a_409_problem(client: httpx.AsyncClient) -> None:
    """A name matching an existing artist's, in any case, answers 409 and creates nothing."""
    response = await client.post("/artists", json={"name": "the velvet orchards"})
    body = problem(response)
    assert (409, "Conflict") == (response.status_code, body["title"])
    assert 'An artist named "the velvet orchards" already exists.' == body["detail"]
    assert response.headers["x-request-id"] == body["request_id"]
    assert seed.ARTIST_COUNT == (await client.get("/artists")).json()["total"]


async def test_artist_writes_are_rate_limited(client: httpx.AsyncClient) -> None:
    """The demo's write route allows ten creations a minute per client, then answers 429."""
    statuses = [
        (await client.post("/artists", json={"name": f"Limited {number}"})).status_code
        for number in range(11)
    ]
    refused = await client.post("/artists", json={"name": "One too many"})

    assert [201] * 10 + [429] == statuses
    assert "application/problem+json" == refused.headers["content-type"]
    assert '"artist-writes-1m";q=10;w=60' in refused.headers["ratelimit-policy"]
    assert seed.ARTIST_COUNT + 10 == (await client.get("/artists")).json()["total"]


async def test_oversized_artist_bodies_are_refused_before_parsing(
    client: httpx.AsyncClient,
) -> None:
    """The demo limits artist writes to 16 KiB: a larger body is a 413 problem, nothing made."""
    response = await client.post("/artists", json={"name": "Big", "notes": "x" * 20_000})
    assert (413, "application/problem+json") == (
        response.status_code,
        response.headers["content-type"],
    )
    assert seed.ARTIST_COUNT == (await client.get("/artists")).json()["total"]


async def test_responses_carry_the_security_headers(client: httpx.AsyncClient) -> None:
    """The guard adds nosniff, frame and referrer policies to the catalog's responses."""
    headers = (await client.get("/artists/1")).headers
    assert ("nosniff", "DENY", "strict-origin-when-cross-origin") == (
        headers["x-content-type-options"],
        headers["x-frame-options"],
        headers["referrer-policy"],
    )


async def test_artist_writes_need_the_demo_key(client: httpx.AsyncClient) -> None:
    """POST /artists without a key, with an empty one or a bad one: 401 with a challenge."""
    body = {"name": "No Key Band"}
    empty = await client.post("/artists", json=body, headers={"x-api-key": ""})
    del client.headers["x-api-key"]
    missing = await client.post("/artists", json=body)
    wrong = await client.post("/artists", json=body, headers={"x-api-key": "bst_wrong"})
    assert [401, 401, 401] == [r.status_code for r in (empty, missing, wrong)]
    assert 'Bearer realm="api"' == missing.headers["www-authenticate"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert seed.ARTIST_COUNT == (await client.get("/artists")).json()["total"]


async def test_a_key_without_the_write_scope_is_403(
    client: httpx.AsyncClient, demo_app: FastAPI
) -> None:
    """A valid key lacking catalog:write may read but not write (403 insufficient_scope)."""
    reader = await demo_app.state.bastion.api_keys.create("reader", scopes=["catalog:read"])
    headers = {"x-api-key": reader.key}
    response = await client.post("/artists", json={"name": "Reader Band"}, headers=headers)
    assert (403, ["catalog:write"]) == (response.status_code, problem(response)["required_scopes"])
    assert 200 == (await client.get("/artists", headers=headers)).status_code


@pytest.mark.parametrize(
    "payload",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 201},
        {"name": "Valid", "country": "Finland"},
        {"name": "Valid", "formed_year": 99999},
        {"name": "Valid", "label": "unknown field"},
        {},
    ],
)
async def test_invalid_artist_is_a_422_problem(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    """Bodies that break the schema answer 422 with errors, and nothing is created."""
    response = await client.post("/artists", json=payload)
    assert 422 == response.status_code
    assert [] != problem(response)["errors"]
    assert seed.ARTIST_COUNT == (await client.get("/artists")).json()["total"]


# ------------------------------------------------------------------------------------- database


def test_seed_catalog_is_deterministic_and_sized() -> None:
    """Two builds of the seed catalog are identical and hold 20 / 60 / 600 rows."""

    def projection() -> list[tuple[str, list[tuple[str, int, list[tuple[str, int]]]]]]:
        return [
            (
                artist.name,
                [
                    (album.title, album.year, [(t.title, t.duration_s) for t in album.tracks])
                    for album in artist.albums
                ],
            )
            for artist in seed.catalog()
        ]

    first = projection()
    albums = [album for _, artist_albums in first for album in artist_albums]
    assert first == projection()
    assert (20, 60, 600) == (len(first), len(albums), sum(len(album[2]) for album in albums))
    assert (20, 60, 600) == (seed.ARTIST_COUNT, seed.ALBUM_COUNT, seed.TRACK_COUNT)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        (DEFAULT_DATABASE_URL, "sqlite+aiosqlite:///bastion-demo.sqlite3"),
    ],
)
def test_urls_without_a_driver_get_the_async_one(given: str, expected: str) -> None:
    """Plain sqlite:/postgresql: URLs are mapped to aiosqlite/asyncpg; explicit drivers stay."""
    assert expected == async_database_url(given).render_as_string()


async def counts(database: Database) -> tuple[int, int, int, int]:
    """Rows in artists, albums, tracks and demo_meta."""
    async with database.session() as session:
        return (
            await session.scalar(select(func.count()).select_from(Artist)) or 0,
            await session.scalar(select(func.count()).select_from(Album)) or 0,
            await session.scalar(select(func.count()).select_from(Track)) or 0,
            await session.scalar(select(func.count()).select_from(DemoMeta)) or 0,
        )


@pytest.fixture
async def database(database_url: str, anyio_backend: str) -> AsyncIterator[Database]:
    """A ``Database`` on the test's SQLite file, closed afterwards."""
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.close()


async def test_open_creates_and_seeds_once(database: Database, database_url: str) -> None:
    """The first open seeds; opening again (a restart) finds the seed and adds nothing."""
    await database.open()
    again = Database(database_url)
    try:
        await again.open()
        assert (True, False) == (database.seeded, again.seeded)
        assert (20, 60, 600, 1) == await counts(again)
    finally:
        await again.close()


async def test_sqlite_connections_are_set_up_for_several_processes(database: Database) -> None:
    """Every connection runs in WAL mode, waits for locks, and enforces foreign keys."""
    await database.open()
    async with database.engine.connect() as connection:
        pragmas = [
            (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        ]
    assert ["wal", 10_000, 1] == pragmas


async def test_foreign_keys_are_enforced(database: Database) -> None:
    """An album of an artist that does not exist is refused by the database."""
    await database.open()
    insert = text("INSERT INTO albums (artist_id, title, year, genre) VALUES (999, 'x', 1, 'y')")
    with pytest.raises(Exception, match="FOREIGN KEY constraint failed"):
        async with database.engine.begin() as connection:
            await connection.execute(insert)


_OPENER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path

    from bastion.demo.db import Database

    async def main() -> None:
        database = Database(sys.argv[1])
        go = Path(sys.argv[2])
        Path(f"{go}.ready.{os.getpid()}").touch()
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        await database.open()
        print("seeded" if database.seeded else "found")
        await database.close()

    asyncio.run(main())
    """
)


def _open_at_once(database_url: str, directory: Path, processes: int) -> list[str]:
    """Start ``processes`` children that open the database at one instant; their outcomes."""
    go = directory / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, database_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        # A barrier: each child imports everything, says it is ready, and waits for "go".
        deadline = time.monotonic() + 30
        while len(list(directory.glob("go.ready.*"))) < processes:
            assert time.monotonic() < deadline, "the children were not ready within 30 s"
            time.sleep(0.01)
        go.touch()
        outcomes = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert 0 == child.returncode, err
            outcomes.append(out.strip())
        return outcomes
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
async def test_workers_starting_at_once_seed_exactly_once(
    tmp_path: Path, database: Database, database_url: str, processes: int
) -> None:
    """N processes opening one new SQLite file at the same instant create and seed it once."""
    outcomes = await anyio.to_thread.run_sync(_open_at_once, database_url, tmp_path, processes)
    assert ["seeded"] + ["found"] * (processes - 1) == sorted(outcomes, reverse=True)
    assert (20, 60, 600, 1) == await counts(database)


def test_invalid_settings_stop_the_import_naming_the_variable(tmp_path: Path) -> None:
    """`bastion.demo:app` with a bad BASTION_REDIS_URL fails at import, naming the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_REDIS_URL"] = "nonsense"
    result = subprocess.run(
        [sys.executable, "-c", "from bastion.demo import app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 != result.returncode
    assert "ConfigurationError" in result.stderr
    assert "BASTION_REDIS_URL='nonsense'" in result.stderr
    assert [] == list(tmp_path.iterdir())  # stopped before creating the database


# ------------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture
async def postgres_database(postgres_url: str, anyio_backend: str) -> AsyncIterator[str]:
    """A fresh database of the test's own on the session's PostgreSQL, dropped afterwards."""
    import asyncpg  # type: ignore[import-untyped]

    name = f"demo_{uuid.uuid4().hex}"

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(postgres_url, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    await run(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_catalog_runs_on_postgresql(postgres_database: str) -> None:
    """On PostgreSQL, two concurrent opens seed once (advisory lock) and the data is complete."""
    first, second = Database(postgres_database), Database(postgres_database)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(first.open)
            group.start_soon(second.open)
        assert [False, True] == sorted([first.seeded, second.seeded])
        assert (20, 60, 600, 1) == await counts(first)
    finally:
        await first.close()
        await second.close()
