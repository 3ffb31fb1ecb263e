"""``bastion doctor``: are the settings valid, and does every configured backend answer?

One line per check, ``ok`` or ``FAIL``, URLs with passwords masked::

    ok   settings
    ok   build hot path compiled with mypyc
    ok   redis redis://cache:6379/0 (connected in 1.1 ms, PING 0.4 ms)
    FAIL database postgresql://app:****@db/app: connection refused

Every check is bounded by ``CHECK_TIMEOUT_S`` and they run concurrently, so a backend that does
not answer (a firewall dropping packets) costs seconds, not a hang. Exit codes: ``0`` all ok,
``1`` a check failed, ``2`` invalid settings.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bastion._urls import redact_url
from bastion.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from bastion.exceptions import BastionError, ConfigurationError
from bastion.settings import load_settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from sqlalchemy import URL

    from bastion.settings import Settings

__all__ = ["CHECK_TIMEOUT_S", "Check", "build_check", "register", "run_checks"]

CHECK_TIMEOUT_S = 2.5
"""Longest a single backend check may take, connection included."""

# The demo's default (bastion.demo.db.DEFAULT_DATABASE_URL), repeated so that the doctor does not
# import the demo, which needs FastAPI, to print it.
_DEMO_DATABASE = "sqlite+aiosqlite:///bastion-demo.sqlite3"
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check."""

    name: str
    """What was checked: ``settings``, ``redis``, ``store``, ``database``."""
    ok: bool
    """Whether it passed."""
    detail: str
    """The (redacted) target and what was found."""

    def line(self) -> str:
        """The check as one aligned output line."""
        return f"{'ok' if self.ok else 'FAIL':<4} {self.name} {self.detail}".rstrip()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``doctor`` command."""
    parser = subparsers.add_parser(
        "doctor",
        help="check the settings and that every configured backend answers",
        description=(
            "Validate the settings, then connect to each configured backend (Redis, the "
            f"database) with a {CHECK_TIMEOUT_S:g} s limit each. Exit 0 if all is well, 1 if a "
            "check failed, 2 if the settings are invalid."
        ),
    )
    parser.set_defaults(run=run)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (drivers wrap the socket error several times)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _reason(exc: BaseException, *, secrets: tuple[str, ...] = ()) -> str:
    """Why a connection failed, in a few words; never a secret."""
    root = _root_cause(exc)
    if isinstance(root, ConnectionRefusedError) or "Connection refused" in str(root):
        text = "connection refused"
    elif isinstance(root, TimeoutError):
        text = "no answer in time"
    elif isinstance(root, socket.gaierror):
        text = "unknown host"
    else:
        # The outermost message is usually the most specific for bastion's own errors.
        chosen = exc if isinstance(exc, BastionError) else root
        first = str(chosen).strip().splitlines()[0] if str(chosen).strip() else ""
        text = f"{type(chosen).__name__}: {first}" if first else type(chosen).__name__
    for secret in secrets:
        text = text.replace(secret, "****")
    return text


async def _bounded(check: Callable[[], Awaitable[Check]], name: str, target: str) -> Check:
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            return await check()
    except TimeoutError:
        return Check(name, False, f"{target}: no answer within {CHECK_TIMEOUT_S:g} s")


async def check_redis(settings: Settings) -> Check:
    """Build the store the app would build and ``PING`` it: once to connect, once to time."""
    from bastion.stores import store_from_url  # imports redis only when a URL is set

    url = settings.redis_url or ""
    shown = redact_url(url)
    timeout_s = min(settings.stores.redis_connect_timeout_s, CHECK_TIMEOUT_S)
    try:
        store = store_from_url(
            url,
            prefix=settings.stores.key_prefix,
            connect_timeout_s=timeout_s,
            socket_timeout_s=min(settings.stores.redis_socket_timeout_s, CHECK_TIMEOUT_S),
        )
    except BastionError as exc:  # a URL redis-py rejects, or the redis extra is missing
        return Check("redis", False, f"{shown}: {exc}")
    try:
        started = time.perf_counter()
        await store.ping()
        connected = time.perf_counter() - started
        started = time.perf_counter()
        await store.ping()
        ping = time.perf_counter() - started
    except Exception as exc:  # any failure is the check's result, reported in a line
        return Check("redis", False, f"{shown}: {_reason(exc)}")
    finally:
        await store.aclose()
    return Check("redis", True, f"{shown} (connected in {_ms(connected)}, PING {_ms(ping)})")


def _sqlite_file_problem(url: URL) -> tuple[bool, str] | None:
    """For a SQLite file that does not exist yet: whether it can be created, and a note.

    ``None`` when the file exists (or the database is in memory) and should be queried. A
    connection would create a missing file: the doctor looks, it does not touch.
    """
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    if path.exists():
        return None
    directory = path.resolve().parent
    if not directory.is_dir():
        return False, f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return False, f"directory {directory} is not writable"
    return True, f"does not exist yet; will be created in {directory}"


async def check_database(settings: Settings) -> Check:
    """Connect with SQLAlchemy's async engine and run ``SELECT 1``."""
    raw = settings.database_url or ""
    shown = redact_url(raw)
    try:
        # The sql extra, imported only when a database is configured.
        from sqlalchemy import make_url, text
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool
    except ImportError as exc:
        return Check("database", False, f"{shown}: {exc} (pip install 'bastion[sql]')")

    url = make_url(raw)
    # A URL without a driver means the async driver bastion installs, as the demo reads it.
    url = url.set(drivername=_ASYNC_DRIVERS.get(url.drivername, url.drivername))
    secrets = (url.password,) if isinstance(url.password, str) and url.password else ()
    if url.get_backend_name() == "sqlite":
        problem = _sqlite_file_problem(url)
        if problem is not None:
            ok, note = problem
            return Check("database", ok, f"{shown} ({note})" if ok else f"{shown}: {note}")
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() == "asyncpg":
        connect_args["timeout"] = CHECK_TIMEOUT_S  # asyncpg's connect timeout, in seconds
    try:
        engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    except Exception as exc:  # most often a driver that is not installed (psycopg)
        return Check("database", False, f"{shown}: {_reason(exc, secrets=secrets)}")
    try:
        started = time.perf_counter()
        async with engine.connect() as connection:
            connected = time.perf_counter() - started
            started = time.perf_counter()
            await connection.execute(text("SELECT 1"))
            query = time.perf_counter() - started
    except Exception as exc:  # any failure is the check's result, reported in a line
        return Check("database", False, f"{shown}: {_reason(exc, secrets=secrets)}")
    finally:
        await engine.dispose()
    return Check(
        "database", True, f"{shown} (connected in {_ms(connected)}, SELECT 1 {_ms(query)})"
    )


def _preload(settings: Settings) -> None:
    """Import the backends' client libraries before the checks run concurrently.

    Importing SQLAlchemy and a driver blocks the event loop for a good part of a second; done
    inside one check, it would eat the other check's connect timeout and report a healthy Redis
    as timed out.
    """
    modules = []
    if settings.redis_url:
        modules.append("bastion.stores.redis")
    if settings.database_url:
        modules += ["sqlalchemy.ext.asyncio", "sqlalchemy.pool"]
        scheme = settings.database_url.partition("://")[0]
        modules.append("asyncpg" if scheme.startswith("postgresql") else "aiosqlite")
    for module in modules:
        with contextlib.suppress(ImportError):  # reported by the check itself, with context
            importlib.import_module(module)


async def run_checks(settings: Settings) -> list[Check]:
    """Check every configured backend concurrently; results in a fixed order."""
    _preload(settings)
    checks: list[tuple[str, str, Callable[[], Awaitable[Check]]]] = []
    if settings.redis_url:
        checks.append(("redis", redact_url(settings.redis_url), lambda: check_redis(settings)))
    if settings.database_url:
        checks.append(
            ("database", redact_url(settings.database_url), lambda: check_database(settings))
        )
    results: list[Check | None] = [None] * len(checks)

    async def run_one(index: int) -> None:
        name, target, check = checks[index]
        results[index] = await _bounded(check, name, target)

    async with anyio.create_task_group() as group:
        for index in range(len(checks)):
            group.start_soon(run_one, index)
    return [result for result in results if result is not None]


def build_check() -> Check:
    """Whether this installation runs the compiled hot path (see docs/performance.md)."""
    import bastion.context

    origin = bastion.context.__file__ or ""
    if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return Check("build", True, "hot path compiled with mypyc")
    return Check(
        "build",
        True,
        "plain Python, slower per request: an editable install, or a wheel built without a C "
        "compiler (see docs/performance.md)",
    )


def _defaults(settings: Settings) -> list[Check]:
    """Lines for what is not configured: the embedded defaults, which need no server."""
    notes = []
    if not settings.redis_url:
        notes.append(
            Check(
                "store",
                True,
                "memory (embedded default; set BASTION_REDIS_URL to share state across workers)",
            )
        )
    if not settings.database_url:
        notes.append(
            Check(
                "database",
                True,
                f"{_DEMO_DATABASE} (embedded default of the demo; set BASTION_DATABASE_URL to "
                "use another)",
            )
        )
    return notes


def run(args: argparse.Namespace) -> int:
    """Validate the settings, check the backends, print one line per check."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        # The diagnosis is the doctor's output: it goes to stdout with the other lines.
        print(Check("settings", False, f"- {exc}").line())
        return EXIT_USAGE
    print(Check("settings", True, "").line(), flush=True)
    print(build_check().line(), flush=True)
    if not settings.redis_url and not settings.database_url:
        print("     nothing configured: the embedded defaults are used, no server to check")
    results = anyio.run(run_checks, settings)
    for check in [*_defaults(settings), *results]:
        print(check.line())
    return EXIT_OK if all(check.ok for check in results) else EXIT_FAILED
