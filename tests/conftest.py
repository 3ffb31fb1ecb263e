"""Shared fixtures: real Redis and PostgreSQL servers, and stores over both backends (DESIGN §8).

Real services, never fakes. The rules, for ``redis_url`` and ``postgres_url``:

1. ``BASTION_TEST_REDIS_URL`` / ``BASTION_TEST_DATABASE_URL``, when set, name the server to use.
2. Otherwise the fixture starts a throw-away server from the binaries on ``PATH`` (for PostgreSQL
   also ``/usr/lib/postgresql/*/bin``). It runs on a free 127.0.0.1 port, in a temporary
   directory, without persistence, and is stopped when the session ends.
3. Otherwise the test is skipped with the reason. With ``BASTION_REQUIRE_SERVICES=1`` (CI) it
   fails instead, so CI can never go green without its real-service tests.

Isolation: each test gets its own Redis key prefix (``redis_store``) and its own PostgreSQL schema
(``postgres_schema``). Nothing ever flushes a server the suite did not start.

Tests that use ``redis_url``, ``redis_store`` or ``redis_server_factory`` are marked ``redis``
automatically; ``postgres_url`` and ``postgres_schema`` add ``postgres``; ``redis_server_factory``
also adds ``slow``. The ``store`` fixture's Redis parameter carries ``redis``. So
``pytest -m "not redis and not postgres"`` runs anywhere.

Fixtures:
    anyio_backend: ``"asyncio"``; async tests are ``@pytest.mark.anyio``.
    manual_clock: a ``ManualClock``; ``memory_store`` runs on it, so memory expiry is driven by
        ``manual_clock.advance(...)``, never by sleeping.
    memory_store: a fresh ``MemoryStore``.
    redis_url: URL of the session's Redis.
    redis_store: a ``RedisStore`` on ``redis_url`` with a unique prefix; its keys are deleted after
        the test.
    store: ``memory_store``, then ``redis_store``: write a store-backed test once, run it on both.
    redis_server_factory: starts dedicated Redis servers that a test may kill and restart.
    postgres_url: URL of the session's PostgreSQL (database ``postgres``, user ``postgres``).
    postgres_schema: a unique, empty schema, dropped after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

import pytest

from bastion._clock import ManualClock
from bastion.stores import MemoryStore, Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from redis.asyncio import Redis

    from bastion.stores.redis import RedisStore

_REDIS_FIXTURES = frozenset({"redis_url", "redis_store", "redis_server_factory"})
_POSTGRES_FIXTURES = frozenset({"postgres_url", "postgres_schema"})
_STARTUP_TIMEOUT_S = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real services their fixtures need, so ``-m`` can select them."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if names & _POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)
        if "redis_server_factory" in names:
            item.add_marker(pytest.mark.slow)


def _unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing service, or fail it when the environment requires services."""
    if os.environ.get("BASTION_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (BASTION_REQUIRE_SERVICES=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    # The kernel picks a free port for a socket bound to port 0. The socket is closed before the
    # server binds the port, so another process could take it in between; the servers below
    # retry on a fresh port when that happens. (``redis-server --port 0`` would disable TCP.)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------- asyncio


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BASTION_* settings from the developer's shell or .env; run in a temp directory."""
    for name in list(os.environ):
        if name.startswith("BASTION_") and not name.startswith("BASTION_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio, the loop bastion is deployed on."""
    return "asyncio"


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock()


# ----------------------------------------------------------------------------------------- Redis


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 that the test suite started and may stop.

    It keeps no data on disk (``--save "" --appendonly no``). After ``kill()`` or ``stop()``,
    ``start()`` brings it back on the same port, empty.

    Args:
        binary: path of ``redis-server``.
        directory: where its log and working files go.
        args: extra command-line options, e.g. ``("--requirepass", "secret")``.
    """

    def __init__(self, binary: str, directory: Path, args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.directory = directory
        self.args = args
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on its previous port, if it had one) and wait until it answers.

        Raises:
            RuntimeError: if it does not come up; the message holds the end of its log.
        """
        if self.running:
            return
        if self.port:
            self._launch()
            return
        for _attempt in range(5):
            self.port = _free_port()
            with contextlib.suppress(_PortTakenError):
                self._launch()
                return
        raise RuntimeError("redis-server could not bind a free port in 5 attempts")

    def _launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        log.write_bytes(b"")
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(log),
            *self.args,
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                tail = _log_tail(log)
                if "Address already in use" in tail:
                    raise _PortTakenError
                raise RuntimeError(f"redis-server exited on startup:\n{tail}")
            if self._answers():
                return
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server did not answer within {_STARTUP_TIMEOUT_S}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # A server with --requirepass answers -NOAUTH: it is up all the same.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would: no shutdown, connections just drop."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server with SIGTERM and wait for it."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _PortTakenError(Exception):
    """Another process bound the port between ``_free_port()`` and the server's start."""


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis for the whole session: the configured one, or a throw-away server."""
    configured = os.environ.get("BASTION_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("needs Redis: set BASTION_TEST_REDIS_URL or put redis-server on PATH")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except RuntimeError as exc:
        _unavailable(f"could not start redis-server: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start dedicated Redis servers (``factory("--requirepass", "x")``) for outage tests.

    Each server belongs to the test: it may kill, stop and restart it. All are stopped after the
    test. Needs ``redis-server`` on PATH even when ``BASTION_TEST_REDIS_URL`` is set, because a
    test must never stop a server the suite did not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("needs redis-server on PATH to start a dedicated server")
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(binary, tmp_path / f"redis-{len(servers)}", args)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


async def _delete_keys(client: Redis, pattern: str) -> None:
    # SCAN, not KEYS: the server may be shared, and KEYS blocks it.
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


@pytest.fixture
def memory_store(manual_clock: ManualClock) -> MemoryStore:
    """A fresh ``MemoryStore`` on ``manual_clock``."""
    return MemoryStore(clock=manual_clock)


@pytest.fixture
async def redis_store(redis_url: str, anyio_backend: str) -> AsyncIterator[RedisStore]:
    """A ``RedisStore`` on ``redis_url`` under a unique prefix; its keys are deleted afterwards."""
    from bastion.stores.redis import RedisStore

    prefix = f"bastion-test-{uuid.uuid4().hex}"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        yield store
    finally:
        try:
            await _delete_keys(store.client, f"{prefix}:*")
        finally:
            await store.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Store:
    """Each store in turn: the test runs once on memory and once on Redis."""
    return cast("Store", request.getfixturevalue(f"{request.param}_store"))


# ------------------------------------------------------------------------------------ PostgreSQL


def _postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: PATH first, then the newest Debian one."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    candidates = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if (path.parent / "postgres").exists()
    ]
    return max(candidates, key=lambda bindir: _version_key(bindir.parent.name), default=None)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _run_sql(url: str, *statements: str) -> None:
    """Run SQL statements on a fresh asyncpg connection, from synchronous code.

    The event loop runs in a worker thread so that it never meets the test's own loop.
    """
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(lambda: asyncio.run(run())).result()


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1 that the test suite started.

    ``initdb`` refuses to run as root. As root, the directory is handed to the ``postgres`` user
    and both ``initdb`` and ``postgres`` run as that user (``subprocess``'s ``user=``, the same as
    ``runuser -u postgres --``). The postmaster is then the direct child, so signals reach it.

    Args:
        bindir: directory holding ``initdb`` and ``postgres``.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.directory = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs a 'postgres' user for initdb") from None
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._user = "postgres"

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Create the cluster, start the server and wait until a query succeeds.

        Raises:
            RuntimeError: if any step fails; the message holds the end of the log.
        """
        data = self.directory / "data"
        log = self.directory / "postgres.log"
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata", str(data),
                "--auth", "trust",
                "--username", "postgres",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
            ],
            capture_output=True,
            cwd=self.directory,
            check=False,
            user=self._user,
            group=self._user,
            extra_groups=None if self._user is None else [],
        )  # fmt: skip
        if initdb.returncode != 0:
            output = (initdb.stdout + initdb.stderr).decode(errors="replace")
            raise RuntimeError(f"initdb failed:\n{output[-2000:]}")
        for _attempt in range(5):
            self.port = _free_port()
            with log.open("ab") as log_file:
                self._process = subprocess.Popen(
                    [
                        str(self.bindir / "postgres"),
                        "-D", str(data),
                        "-p", str(self.port),
                        "-k", str(self.directory),
                        "-c", "listen_addresses=127.0.0.1",
                        "-c", "fsync=off",
                        "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    user=self._user,
                    group=self._user,
                    extra_groups=None if self._user is None else [],
                )  # fmt: skip
            if self._wait_ready(log):
                return
        raise RuntimeError(f"postgres could not bind a free port:\n{_log_tail(log)}")

    def _wait_ready(self, log: Path) -> bool:
        """Wait until a real query works; ``False`` if the port was taken by someone else."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                tail = _log_tail(log)
                if "could not bind" in tail or "already in use" in tail:
                    return False
                raise RuntimeError(f"postgres exited on startup:\n{tail}")
            try:
                _run_sql(self.url, "SELECT 1")
            except Exception as exc:  # refused, or "the database system is starting up"
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
                continue
            return True
        self.stop()
        raise RuntimeError(
            f"postgres did not answer within {_STARTUP_TIMEOUT_S}s (last error: {last_error})"
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: SIGINT) and remove its directory."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL for the whole session: the configured one, or a throw-away server."""
    configured = os.environ.get("BASTION_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    bindir = _postgres_bindir()
    if bindir is None:
        _unavailable(
            "needs PostgreSQL: set BASTION_TEST_DATABASE_URL or install initdb and postgres"
        )
    if importlib.util.find_spec("asyncpg") is None:
        _unavailable("needs asyncpg to talk to PostgreSQL: install bastion[sql]")
    try:
        server = PostgresServer(bindir)
    except RuntimeError as exc:
        _unavailable(f"could not prepare PostgreSQL: {exc}")
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        _unavailable(f"could not start PostgreSQL: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A unique empty schema on ``postgres_url``, dropped with its contents after the test.

    Use it as the search path, e.g. ``asyncpg.connect(url, server_settings={"search_path":
    schema})`` or SQLAlchemy's ``connect_args={"server_settings": {"search_path": schema}}``.
    """
    schema = f"test_{uuid.uuid4().hex}"
    _run_sql(postgres_url, f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        _run_sql(postgres_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
