"""``RedisStore`` beyond the contract: ownership, key layout, scripts, errors and outages.

Everything runs against real Redis servers. Tests that stop, pause or flush a server use a
dedicated one from ``redis_server_factory``, never the shared one.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import socket
import ssl
import time
import uuid
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import pytest
import redis.exceptions
from redis.asyncio import Redis

from bastion._clock import ManualClock
from bastion.events import Event, Hooks, StoreDown, StoreUp
from bastion.exceptions import (
    ConfigurationError,
    StoreBusy,
    StoreDataError,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from bastion.stores import StoreHealthGate
from bastion.stores.redis import RedisStore, _translate_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.anyio


class RedisServer(Protocol):
    """What these tests use of conftest's ``RedisServer`` (conftest is not importable)."""

    @property
    def url(self) -> str: ...
    @property
    def port(self) -> int: ...
    def kill(self) -> None: ...
    def start(self) -> None: ...


@pytest.fixture
async def admin(redis_url: str, anyio_backend: str) -> AsyncIterator[Redis]:
    """A plain client on the shared server, for looking behind the store's back."""
    async with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
async def prefix(admin: Redis) -> AsyncIterator[str]:
    """A unique key prefix; its keys are deleted after the test."""
    unique = f"bastion-test-{uuid.uuid4().hex}"
    yield unique
    keys = [key async for key in admin.scan_iter(match=f"{unique}:*")]
    if keys:
        await admin.unlink(*keys)


async def _connections_named(admin: Redis, name: str) -> int:
    return sum(1 for client in await admin.client_list() if client.get("name") == name)


async def _wait_for_connections(admin: Redis, name: str, expected: int) -> int:
    """Poll CLIENT LIST (bounded): the server notices a closed socket on its next loop turn."""
    for _ in range(200):
        if await _connections_named(admin, name) == expected:
            break
        await anyio.sleep(0.01)
    return await _connections_named(admin, name)


def _recorder(events: list[Event]) -> Hooks:
    hooks = Hooks()
    hooks.subscribe(Event, events.append)
    return hooks


# --------------------------------------------------------------------------------- ownership


async def test_a_borrowed_client_stays_open_after_aclose(redis_url: str, admin: Redis) -> None:
    """RedisStore(client) never closes what it was given: the client keeps its connection."""
    name = f"borrowed-{uuid.uuid4().hex}"
    async with Redis.from_url(redis_url, client_name=name) as client:
        store = RedisStore(client)
        await store.ping()
        await store.aclose()
        assert (True, 1) == (await client.ping(), await _connections_named(admin, name))


async def test_an_owned_pool_is_closed_by_aclose(redis_url: str, admin: Redis) -> None:
    """RedisStore.from_url() owns its pool: aclose() disconnects it."""
    name = f"owned-{uuid.uuid4().hex}"
    store = RedisStore.from_url(redis_url, client_name=name)
    await store.ping()
    assert 1 == await _connections_named(admin, name)
    await store.aclose()
    assert 0 == await _wait_for_connections(admin, name, 0)


async def test_async_with_closes_an_owned_store(redis_url: str, admin: Redis) -> None:
    """``async with RedisStore.from_url(...)`` closes the pool on exit."""
    name = f"owned-{uuid.uuid4().hex}"
    async with RedisStore.from_url(redis_url, client_name=name) as store:
        await store.ping()
    assert 0 == await _wait_for_connections(admin, name, 0)


async def test_views_share_the_client_and_gate_and_never_close_them(
    redis_url: str, admin: Redis
) -> None:
    """Namespaced views reuse the root's client and gate; closing a view closes nothing."""
    name = f"owned-{uuid.uuid4().hex}"
    async with RedisStore.from_url(redis_url, client_name=name) as store:
        view = store.with_namespace("feature").with_namespace("sub")
        await view.ping()
        await view.aclose()
        assert (True, True, 1) == (
            view.client is store.client,
            view.gate is store.gate,
            await _connections_named(admin, name),
        )


async def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    """Values are bytes, so a client with decode_responses=True is a configuration error."""
    async with Redis.from_url(redis_url, decode_responses=True) as client:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisStore(client)


async def test_hooks_and_clock_belong_to_the_gate_when_a_gate_is_given(redis_url: str) -> None:
    """Passing a gate together with hooks would silently drop the hooks, so it is refused."""
    async with Redis.from_url(redis_url) as client:
        with pytest.raises(ConfigurationError, match="StoreHealthGate"):
            RedisStore(client, gate=StoreHealthGate(), hooks=Hooks())


# -------------------------------------------------------------------------------- key layout


async def test_keys_are_prefix_namespace_key(redis_url: str, admin: Redis, prefix: str) -> None:
    """A key lands in Redis as {prefix}:{namespace}:{key}; the root omits the namespace."""
    async with RedisStore.from_url(redis_url, prefix=prefix) as store:
        await store.set("k", b"root")
        await store.with_namespace("a").with_namespace("b").set("k", b"nested")
    assert [b"root", b"nested"] == [
        await admin.get(f"{prefix}:k"),
        await admin.get(f"{prefix}:a:b:k"),
    ]


async def test_an_empty_prefix_leaves_only_the_namespace(redis_url: str, admin: Redis) -> None:
    """With prefix="", keys are {namespace}:{key}."""
    namespace = f"bastion-test-{uuid.uuid4().hex}"
    async with RedisStore.from_url(redis_url, prefix="") as store:
        await store.with_namespace(namespace).set("k", b"v")
    assert b"v" == await admin.getdel(f"{namespace}:k")


async def test_ttls_are_set_in_milliseconds(redis_url: str, admin: Redis, prefix: str) -> None:
    """A fractional TTL keeps its precision: 1.5 s is PX 1500, not EX 1."""
    async with RedisStore.from_url(redis_url, prefix=prefix) as store:
        await store.set("k", b"v", ttl_s=1.5)
    remaining_ms = await admin.pttl(f"{prefix}:k")
    assert 1000 < remaining_ms <= 1500


async def test_repr_shows_keys_ownership_and_gate(redis_url: str) -> None:
    """The repr says where keys go, whether it owns the client, and the gate's state."""
    async with RedisStore.from_url(redis_url, prefix="p") as store:
        assert [
            "RedisStore(keys='p:', owns_client=True, gate='closed')",
            "RedisStore(keys='p:ns:', owns_client=False, gate='closed')",
        ] == [repr(store), repr(store.with_namespace("ns"))]


# ------------------------------------------------------------------------------------ scripts


async def test_incr_recovers_after_the_script_cache_is_flushed(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """After SCRIPT FLUSH (or a restart/failover), the next incr reloads the script and works."""
    server = redis_server_factory()
    lua = resources.files("bastion.stores").joinpath("lua/incr_expire.lua").read_bytes()
    sha = hashlib.sha1(lua, usedforsecurity=False).hexdigest()
    async with RedisStore.from_url(server.url) as store, Redis.from_url(server.url) as admin:
        assert 1 == await store.incr("counter", ttl_s=60)
        loaded = await admin.script_exists(sha)
        await admin.script_flush()
        flushed = await admin.script_exists(sha)
        assert 2 == await store.incr("counter", ttl_s=60)
        assert ([True], [False], [True]) == (loaded, flushed, await admin.script_exists(sha))


# ----------------------------------------------------------------------- error translation

# Every exception class redis-py defines, and what the store raises for it. A new class in a
# future redis-py fails test_the_table_covers_every_redis_exception until it is decided here.
EXPECTED_TRANSLATION: dict[str, type[StoreError] | None] = {
    "AskError": StoreDataError,  # cluster redirects: handled by cluster clients, not ours
    "AuthenticationError": StoreUnavailable,
    "AuthenticationWrongNumberOfArgsError": StoreDataError,
    "AuthorizationError": StoreUnavailable,
    "BusyLoadingError": StoreUnavailable,
    "ClusterCrossSlotError": StoreDataError,
    "ClusterDownError": StoreUnavailable,
    "ClusterError": StoreError,
    "ConnectionError": StoreUnavailable,
    "DataError": StoreDataError,
    "ExecAbortError": StoreDataError,
    "ExternalAuthProviderError": StoreUnavailable,
    "InvalidResponse": StoreError,
    "LockError": StoreError,
    "LockNotOwnedError": StoreError,
    "MasterDownError": StoreUnavailable,
    "MaxConnectionsError": StoreUnavailable,
    "ModuleError": StoreDataError,
    "MovedError": StoreDataError,
    "NoPermissionError": StoreDataError,
    "NoScriptError": StoreDataError,  # only if re-sending the script failed too
    "NoSuchFieldsetError": StoreDataError,
    "OutOfMemoryError": StoreDataError,
    "PubSubError": StoreError,
    "ReadOnlyError": StoreUnavailable,
    "RedisError": StoreError,
    "ResponseError": StoreDataError,
    "TimeoutError": StoreTimeout,
    "TryAgainError": StoreUnavailable,
    "WatchError": StoreError,
    # Not RedisError: raised by cluster clients or after a fork, never by RedisStore's commands.
    # They are programming errors and propagate untranslated.
    "ChildDeadlockedError": None,
    "CrossSlotTransactionError": None,
    "IncorrectPolicyType": None,
    "InvalidPipelineStack": None,
    "RedisClusterException": None,
    "SlotNotCoveredError": None,
}


def _redis_exception_names() -> list[str]:
    return sorted(
        name
        for name, value in vars(redis.exceptions).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == redis.exceptions.__name__
    )


def test_the_table_covers_every_redis_exception() -> None:
    """Each exception class in redis.exceptions has a decided translation, and no more."""
    assert sorted(EXPECTED_TRANSLATION) == _redis_exception_names()


@pytest.mark.parametrize("name", _redis_exception_names())
def test_each_redis_exception_maps_to_its_store_error(name: str) -> None:
    """Outages become StoreUnavailable/StoreTimeout, refusals StoreDataError, others StoreError."""
    error_class = getattr(redis.exceptions, name)
    # Redirect errors parse their message as "<slot> <host:port>".
    message = "3999 127.0.0.1:6381" if issubclass(error_class, redis.exceptions.AskError) else "x"
    translated = _translate_error(error_class(message))
    assert EXPECTED_TRANSLATION.get(name, "missing from the table") == (
        None if translated is None else type(translated)
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError("timed out"), StoreTimeout),  # also asyncio.TimeoutError, socket.timeout
        (ConnectionRefusedError(111, "refused"), StoreUnavailable),
        (ConnectionResetError(104, "reset"), StoreUnavailable),
        (socket.gaierror(-2, "Name or service not known"), StoreUnavailable),
        (ssl.SSLError("bad handshake"), StoreUnavailable),
        (OSError(113, "no route to host"), StoreUnavailable),
        (ValueError("a bug"), None),
        (asyncio.CancelledError(), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_socket_errors_map_too(error: BaseException, expected: type[StoreError] | None) -> None:
    """Errors from below redis-py are outages; bugs and cancellation are not translated."""
    translated = _translate_error(error)
    assert expected == (None if translated is None else type(translated))


def test_translated_messages_name_the_cause_and_scrub_secrets() -> None:
    """The message keeps the original class and text, with known secrets masked."""
    error = redis.exceptions.ConnectionError("auth as hunter2 failed")
    translated = _translate_error(error, ("hunter2",))
    assert "redis is unavailable: ConnectionError: auth as **** failed" == str(translated)


async def test_errors_are_raised_from_the_redis_exception(redis_url: str, prefix: str) -> None:
    """The StoreError's __cause__ is redis-py's exception, for debugging."""
    async with RedisStore.from_url(redis_url, prefix=prefix) as store:
        await store.set("text", b"not a number")
        with pytest.raises(StoreDataError) as caught:
            await store.incr("text")
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)


async def test_a_server_error_does_not_count_as_an_outage(redis_url: str, prefix: str) -> None:
    """StoreDataError means Redis answered: the gate's failure count stays at zero."""
    async with RedisStore.from_url(redis_url, prefix=prefix) as store:
        await store.set("text", b"not a number")
        for _ in range(5):
            with pytest.raises(StoreDataError):
                await store.incr("text")
        assert ("closed", 0) == (store.gate.state, store.gate.consecutive_failures)


async def test_an_unreachable_server_raises_store_unavailable() -> None:
    """Nothing listening: StoreUnavailable at once, naming the address, never a raw error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with RedisStore.from_url(f"redis://127.0.0.1:{port}/0") as store:
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}") as caught:
            await store.get("k")
        elapsed = time.perf_counter() - started
    assert StoreUnavailable is type(caught.value)
    # One attempt, no retry loop: redis-py's default Retry would back off for seconds here.
    assert elapsed < 0.25


async def test_a_server_that_stops_answering_raises_store_timeout(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """A server that accepts but does not reply (paused) costs socket_timeout_s: StoreTimeout."""
    server = redis_server_factory()
    async with RedisStore.from_url(server.url, socket_timeout_s=0.1) as store:
        await store.ping()
        async with Redis.from_url(server.url) as admin:
            await admin.client_pause(2_000, all=True)
        started = time.perf_counter()
        with pytest.raises(StoreTimeout):
            await store.get("k")
        elapsed = time.perf_counter() - started
    assert 0.09 < elapsed < 1.0


async def test_a_wrong_password_never_appears_in_errors_or_events(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Authentication failures are outages whose messages and events carry no password."""
    server = redis_server_factory("--requirepass", "the-right-one")
    secret = "wrong-pass-8d41"
    events: list[Event] = []
    url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
    async with RedisStore.from_url(url, hooks=_recorder(events)) as store:
        messages = []
        for _ in range(4):  # three to open the gate, one refused by the open gate
            with pytest.raises(StoreUnavailable) as caught:
                await store.get("k")
            messages += [str(caught.value), repr(caught.value)]
    assert [] == [text for text in [*messages, *map(repr, events)] if secret in text]
    assert "open" == store.gate.state


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cret@127.0.0.1:notaport/0", "http://:s3cret@127.0.0.1:6379/0"],
    ids=["bad-port", "bad-scheme"],
)
def test_an_invalid_url_is_a_configuration_error_without_the_password(url: str) -> None:
    """A malformed URL raises ConfigurationError showing the URL with its password masked."""
    with pytest.raises(ConfigurationError) as caught:
        RedisStore.from_url(url)
    assert (True, False, None) == (
        ":****@" in str(caught.value),
        "s3cret" in str(caught.value),
        caught.value.__cause__,
    )


@pytest.mark.parametrize(
    "option",
    ["socket_timeout_s", "connect_timeout_s", "pool_timeout_s", "max_connections"],
)
def test_from_url_validates_its_options(option: str) -> None:
    """Timeouts and the pool size must be positive."""
    options: dict[str, Any] = {option: 0}
    with pytest.raises(ConfigurationError, match=option):
        RedisStore.from_url("redis://127.0.0.1:6379/0", **options)


# ------------------------------------------------------------------------------------ outage


async def test_an_outage_fails_fast_and_recovers_without_a_restart(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Kill Redis: errors, then fail-fast without touching it; restart it: service resumes.

    The gate runs on a ManualClock, so the test decides when the delay has passed. While the gate
    is open, the server's connection counter proves that no operation reached it.
    """
    server = redis_server_factory()
    clock = ManualClock()
    events: list[Event] = []
    gate = StoreHealthGate(
        failure_threshold=3, base_delay_s=5.0, clock=clock, hooks=_recorder(events)
    )
    async with RedisStore.from_url(server.url, gate=gate) as store:
        limits = store.with_namespace("ratelimit")
        assert 1 == await limits.incr("client", ttl_s=60)

        # The crash: the first operations hit the dead server and fail like any outage.
        server.kill()
        failures = []
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as caught:
                await limits.incr("client", ttl_s=60)
            failures.append(type(caught.value))
        assert [StoreUnavailable] * 3 == failures
        assert ("open", [StoreDown]) == (gate.state, [type(event) for event in events])

        # The gate is open: operations fail at once.
        durations = []
        for _ in range(20):
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="health gate open"):
                await limits.incr("client", ttl_s=60)
            durations.append(time.perf_counter() - started)
        assert max(durations) < 0.005

        # Redis is back on the same port, but until the delay passes nobody connects to it.
        server.start()
        async with Redis.from_url(server.url) as admin:
            connections_before = (await admin.info("stats"))["total_connections_received"]
            for _ in range(20):
                with pytest.raises(StoreUnavailable, match="health gate open"):
                    await limits.get("client")
            connections_after = (await admin.info("stats"))["total_connections_received"]
        assert connections_before == connections_after

        # After the delay, the next operation is the probe; it succeeds and the gate closes.
        clock.advance(5.0)
        assert 1 == await limits.incr("client", ttl_s=60)  # the crash lost the old counter
        assert "closed" == gate.state
        assert [StoreDown, StoreUp] == [type(event) for event in events]
        assert StoreUp(store="redis", down_for_s=5.0) == events[-1]
        assert [2, b"2"] == [await limits.incr("client"), await store.get("ratelimit:client")]


@pytest.mark.anyio
async def test_a_burst_beyond_the_pool_is_busy_and_leaves_the_gate_closed(
    redis_url: str, prefix: str
) -> None:
    """With every pooled connection taken, operations fail as StoreBusy; the gate stays closed
    and the store answers again as soon as a connection is free."""
    store = RedisStore.from_url(
        redis_url, prefix=prefix, max_connections=1, pool_timeout_s=0.05, socket_timeout_s=3
    )
    try:

        async def hold_the_only_connection() -> None:
            await store.client.blpop([f"{prefix}:never"], timeout=1)

        blocker = asyncio.create_task(hold_the_only_connection())
        await asyncio.sleep(0.2)  # the only connection is now inside BLPOP
        outcomes = await asyncio.gather(
            *(store.get("key") for _ in range(5)), return_exceptions=True
        )
        await blocker

        assert all(isinstance(outcome, StoreBusy) for outcome in outcomes)
        assert "closed" == store.gate.state
        assert await store.get("key") is None
    finally:
        await store.aclose()
