"""Fixtures shared by the cache tests: backends over memory and real Redis, and recorded events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pytest

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, MemoryCacheBackend, set_default_backend
from bastion.events import Event, Hooks

if TYPE_CHECKING:
    from bastion.cache import RedisCacheBackend
    from bastion.stores.gate import StoreHealthGate
    from bastion.stores.redis import RedisStore
    from tests.conftest import RedisServer


class Recorder:
    """Hooks that keep every published event, in order."""

    def __init__(self) -> None:
        self.hooks = Hooks()
        self.events: list[Event] = []
        self.hooks.subscribe(Event, self.events.append)

    def of(self, event_type: type[Event]) -> list[Event]:
        """The recorded events of one type."""
        return [event for event in self.events if isinstance(event, event_type)]


@pytest.fixture
def recorder() -> Recorder:
    """A fresh event recorder."""
    return Recorder()


@pytest.fixture
def memory_backend(manual_clock: ManualClock, recorder: Recorder) -> MemoryCacheBackend:
    """A ``MemoryCacheBackend`` on ``manual_clock``, publishing to ``recorder``."""
    return MemoryCacheBackend(clock=manual_clock, hooks=recorder.hooks)


@pytest.fixture
def redis_backend(redis_store: RedisStore, recorder: Recorder) -> RedisCacheBackend:
    """A ``RedisCacheBackend`` under the test's unique prefix, publishing to ``recorder``."""
    from bastion.cache import RedisCacheBackend

    return RedisCacheBackend(redis_store.with_namespace("cache"), hooks=recorder.hooks)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> CacheBackend:
    """Each backend in turn: the test runs once on memory and once on Redis."""
    return cast("CacheBackend", request.getfixturevalue(f"{request.param}_backend"))


@pytest.fixture(autouse=True)
def _no_default_backend() -> Iterator[None]:
    """Every test starts and ends without a process-wide default backend."""
    set_default_backend(None)
    yield
    set_default_backend(None)


@pytest.fixture
async def dead_backend(recorder: Recorder) -> AsyncIterator[RedisCacheBackend]:
    """A Redis backend pointing at a port nobody listens on: every operation fails."""
    from bastion.cache import RedisCacheBackend
    from bastion.stores.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:1/0", connect_timeout_s=0.2)
    try:
        yield RedisCacheBackend(store.with_namespace("cache"), hooks=recorder.hooks)
    finally:
        await store.aclose()


@dataclass
class Outage:
    """A dedicated Redis the test may kill and restart, and a backend on it."""

    server: RedisServer
    clock: ManualClock
    """Drives the health gate: advance it past ``gate``'s delay to let a probe through."""
    gate: StoreHealthGate
    """Opens after one failure, lets a probe through after one second."""
    backend: RedisCacheBackend


@pytest.fixture
async def outage(redis_server_factory: Callable[..., RedisServer]) -> AsyncIterator[Outage]:
    """A backend on a dedicated Redis server, for outage and recovery tests."""
    from bastion.cache import RedisCacheBackend
    from bastion.stores.gate import StoreHealthGate
    from bastion.stores.redis import RedisStore

    server = redis_server_factory()
    clock = ManualClock()
    gate = StoreHealthGate(failure_threshold=1, base_delay_s=1.0, clock=clock)
    store = RedisStore.from_url(server.url, gate=gate)
    try:
        yield Outage(server, clock, gate, RedisCacheBackend(store.with_namespace("cache")))
    finally:
        await store.aclose()
