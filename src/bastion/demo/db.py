"""The demo's database: engine, sessions, and a create-and-seed that is safe with many workers.

``uvicorn bastion.demo:app --workers 4`` starts four processes that open one SQLite file at the
same moment. Three things make that safe:

- every connection sets ``busy_timeout`` (wait for a lock instead of failing at once),
  ``journal_mode=WAL`` (readers never block the writer, nor the writer the readers) and
  ``foreign_keys=ON`` (SQLite leaves them off by default);
- schema creation and seeding run in one transaction that takes the database's write lock first
  (``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on PostgreSQL), so the
  workers queue up: the first creates and seeds, the others find it done and skip;
- "done" is a row in ``demo_meta`` written in that same transaction, so a worker that dies while
  seeding leaves nothing behind and the next start seeds again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from sqlalchemy import URL, event, make_url, select, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from bastion._urls import redact_url
from bastion.demo import seed
from bastion.demo.models import Base, DemoMeta

__all__ = [
    "DEFAULT_DATABASE_URL",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Database",
    "async_database_url",
]

logger = logging.getLogger("bastion.demo")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///bastion-demo.sqlite3"
"""Where the demo keeps its data when ``BASTION_DATABASE_URL`` is not set: the current directory."""

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite connection waits for another process's write lock before failing."""

_SEED_KEY = "seed_version"
# Any constant works; it only has to be the same in every worker (and unlikely to collide).
_PG_INIT_LOCK = 0x6261_7374_696F_6E  # "bastion"

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def async_database_url(url: str | URL) -> URL:
    """The SQLAlchemy URL to use with an async engine.

    A URL without a driver (``sqlite:///x.db``, ``postgresql://host/db``) gets the async driver
    bastion installs (aiosqlite, asyncpg); an explicit driver is kept as given.
    """
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver is not None else parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the file's lock.

    SQLite does not always call the busy handler for the journal-mode switch: when two
    processes open a fresh file at once, one of them can get "database is locked" immediately,
    whatever ``busy_timeout`` says (seen in CI with two workers starting together). The switch is
    persistent, so once any process made it, the others' pragma is a quick no-op.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        # A blocking sleep on the event loop: acceptable because it happens only while several
        # processes create a fresh file at once (at startup), for milliseconds; afterwards the
        # file is in WAL mode and the pragma succeeds at the first try.
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Set the per-connection pragmas several worker processes need to share one file."""
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL takes a lock another process may be holding.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        # NORMAL is durable against application crashes in WAL mode, and far fewer fsyncs.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


class Database:
    """The demo's engine and session factory, created and seeded by ``open()``.

    Args:
        url: SQLAlchemy URL; ``sqlite:`` and ``postgresql:`` URLs without a driver get the async
            one. Defaults to ``DEFAULT_DATABASE_URL``.
        echo: log every SQL statement (``sqlalchemy.engine`` logger).

    Attributes:
        url: the URL the engine connects to.
        engine: the async engine; it connects lazily, on ``open()`` or the first session.
        seeded: whether this object's last ``open()`` seeded the database (``False`` when
            another process, or an earlier start, had done it).
    """

    __slots__ = ("_sessions", "engine", "seeded", "url")

    def __init__(self, url: str | URL = DEFAULT_DATABASE_URL, *, echo: bool = False) -> None:
        self.url = async_database_url(url)
        options: dict[str, Any] = {"echo": echo}
        if _is_memory_sqlite(self.url):
            # Every connection to ":memory:" is a new, empty database: share one connection.
            options["poolclass"] = StaticPool
        elif self.url.get_backend_name() == "postgresql":
            options["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _configure_sqlite)
        # expire_on_commit=False: a handler may read the object it just committed without a
        # lazy load, which async sessions cannot do implicitly.
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.seeded = False

    def __repr__(self) -> str:
        return f"Database({redact_url(self.url.render_as_string(hide_password=False))!r})"

    def session(self) -> AsyncSession:
        """A new session; use it as ``async with database.session() as session``."""
        return self._sessions()

    async def open(self) -> None:
        """Create the schema and seed it, unless another process (or an earlier start) did."""
        async with self.engine.connect() as connection:
            await _lock_for_initialization(connection)
            await connection.run_sync(Base.metadata.create_all)
            done = await connection.scalar(select(DemoMeta.value).where(DemoMeta.key == _SEED_KEY))
            if done is None:
                # The session joins the connection's transaction, so the catalog, the marker
                # row and the schema commit together or not at all.
                async with AsyncSession(bind=connection) as session:
                    session.add_all(seed.catalog())
                    session.add(DemoMeta(key=_SEED_KEY, value=seed.SEED_VERSION))
                    await session.flush()
            await connection.commit()
        self.seeded = done is None
        if self.seeded:
            logger.info("created and seeded the demo database %r", self)
        else:
            logger.debug("demo database %r already holds seed version %s", self, done)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def _lock_for_initialization(connection: AsyncConnection) -> None:
    """Begin a transaction holding the lock that serializes initialization across processes."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # IMMEDIATE takes the write lock now: a second process waits here (busy_timeout) until
        # the first commits, then sees its tables and seed marker.
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_INIT_LOCK})
    else:
        # Other databases: creation is still idempotent (checkfirst), seeding may race.
        logger.warning("no initialization lock for %s; start a single worker first", dialect)
