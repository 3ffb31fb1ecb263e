"""Single-flight: one producer per key, in a process and across processes sharing a backend."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from bastion._clock import ManualClock
from bastion.cache import CacheBackend, FlightResult, MemoryCacheBackend, SingleFlight
from bastion.events import CacheStoreFailure
from tests.cache.conftest import Recorder

pytestmark = pytest.mark.anyio


class Producer:
    """Counts its runs, stores its value in the backend, and can be held at a gate."""

    def __init__(self, backend: CacheBackend | None, key: str, value: bytes | None = b"v") -> None:
        self.backend = backend
        self.key = key
        self.value = value
        self.runs = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def produce(self) -> bytes | None:
        self.runs += 1
        await self.gate.wait()
        if self.value is not None and self.backend is not None:
            await self.backend.set(self.key, self.value, ttl_s=60)
        return self.value

    async def load(self) -> bytes | None:
        return None if self.backend is None else await self.backend.get(self.key)

    def call(self, flight: SingleFlight) -> Coroutine[Any, Any, FlightResult[bytes]]:
        """``flight.run`` for this producer's key, with its ``produce`` and ``load``."""
        return flight.run(self.key, self.produce, load=self.load)


async def _settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_concurrent_calls_run_the_producer_once() -> None:
    """500 concurrent calls for a cold key: one run, everyone gets its value, one led."""
    flight = SingleFlight(None)
    producer = Producer(None, "k")
    producer.gate.clear()
    tasks = [asyncio.create_task(producer.call(flight)) for _ in range(500)]
    await _settle()
    producer.gate.set()
    results = await asyncio.gather(*tasks)
    assert (1, {b"v"}, 1, 0) == (
        producer.runs,
        {result.value for result in results},
        sum(result.led for result in results),
        flight.inflight,
    )


async def test_different_keys_run_separately() -> None:
    """Single-flight is per key."""
    flight = SingleFlight(None)
    one, two = Producer(None, "a", b"1"), Producer(None, "b", b"2")
    results = await asyncio.gather(one.call(flight), two.call(flight))
    assert [FlightResult(b"1", True), FlightResult(b"2", True)] == list(results)


async def test_unshareable_result_sends_waiters_to_their_own_producer() -> None:
    """A None result reaches the waiters as None, with led False: they must produce their own."""
    flight = SingleFlight(None)
    producer = Producer(None, "k", value=None)
    producer.gate.clear()
    leader = asyncio.create_task(producer.call(flight))
    await _settle()
    waiter = asyncio.create_task(producer.call(flight))
    await _settle()
    producer.gate.set()
    assert (FlightResult(None, True), FlightResult(None, False), 1) == (
        await leader,
        await waiter,
        producer.runs,
    )


async def test_leader_error_is_its_own_and_frees_the_waiters() -> None:
    """The leader's exception is raised in the leader only; waiters get None, not a hang."""
    flight = SingleFlight(None)
    release = asyncio.Event()

    async def failing() -> bytes | None:
        await release.wait()
        raise RuntimeError("boom")

    async def load() -> bytes | None:
        return None

    leader = asyncio.create_task(flight.run("k", failing, load=load))
    await _settle()
    waiter = asyncio.create_task(flight.run("k", failing, load=load))
    await _settle()
    release.set()
    with pytest.raises(RuntimeError, match="boom"):
        await leader
    assert (FlightResult(None, False), 0) == (await waiter, flight.inflight)


async def test_cancelled_leader_frees_the_waiters() -> None:
    """Cancelling the leader resolves its waiters with None and forgets the key."""
    flight = SingleFlight(None)
    producer = Producer(None, "k")
    producer.gate.clear()
    leader = asyncio.create_task(producer.call(flight))
    await _settle()
    waiter = asyncio.create_task(producer.call(flight))
    await _settle()
    leader.cancel()
    assert (FlightResult(None, False), 0) == (await waiter, flight.inflight)
    assert leader.cancelled()


async def test_cancelled_waiter_leaves_the_others_alone() -> None:
    """A waiter's cancellation does not cancel the shared run or the other waiters."""
    flight = SingleFlight(None)
    producer = Producer(None, "k")
    producer.gate.clear()
    leader = asyncio.create_task(producer.call(flight))
    await _settle()
    quitter = asyncio.create_task(producer.call(flight))
    stayer = asyncio.create_task(producer.call(flight))
    await _settle()
    quitter.cancel()
    await _settle()
    producer.gate.set()
    assert (FlightResult(b"v", True), FlightResult(b"v", False), True) == (
        await leader,
        await stayer,
        quitter.cancelled(),
    )


async def test_two_processes_sharing_a_backend_run_once(backend: CacheBackend) -> None:
    """Two flights on one backend (as two workers would be) run the producer once in all."""
    flights = [SingleFlight(backend, poll_interval_s=0.01) for _ in range(2)]
    producer = Producer(backend, "k")
    producer.gate.clear()
    tasks = [asyncio.create_task(producer.call(flight)) for flight in flights for _ in range(50)]
    await asyncio.sleep(0.05)
    producer.gate.set()
    results = await asyncio.gather(*tasks)
    assert (1, {b"v"}, 1) == (
        producer.runs,
        {result.value for result in results},
        sum(result.led for result in results),
    )


async def test_a_value_stored_before_the_lock_is_loaded_not_produced(
    backend: CacheBackend,
) -> None:
    """After taking the lock, the leader checks the store once more before producing."""
    producer = Producer(backend, "k")
    await backend.set("k", b"already", ttl_s=60)
    result = await SingleFlight(backend).run("k", producer.produce, load=producer.load)
    assert (FlightResult(b"already", False), 0) == (result, producer.runs)


async def test_the_lock_is_released_after_producing(backend: CacheBackend) -> None:
    """Producing leaves the lock free for the next miss."""
    producer = Producer(backend, "k")
    await SingleFlight(backend).run("k", producer.produce, load=producer.load)
    assert "acquired" == await backend.acquire("k", "next", ttl_s=1)


async def test_the_lock_is_released_when_the_producer_fails(backend: CacheBackend) -> None:
    """A failing producer releases its lock, so another process takes over at once."""

    async def failing() -> bytes | None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await SingleFlight(backend).run("k", failing, load=lambda: backend.get("k"))
    assert "acquired" == await backend.acquire("k", "next", ttl_s=1)


async def test_unshareable_result_stops_other_processes_waiting(backend: CacheBackend) -> None:
    """A process waiting on another's lock produces its own as soon as that result is unshared."""
    first = Producer(backend, "k", value=None)
    first.gate.clear()
    second = Producer(backend, "k", value=None)
    leader = asyncio.create_task(SingleFlight(backend).run("k", first.produce, load=first.load))
    await asyncio.sleep(0.02)
    waiter = asyncio.create_task(
        SingleFlight(backend, poll_interval_s=0.01).run("k", second.produce, load=second.load)
    )
    await asyncio.sleep(0.02)
    first.gate.set()
    assert (FlightResult(None, True), FlightResult(None, True)) == (await leader, await waiter)
    assert (1, 1) == (first.runs, second.runs)


@pytest.mark.parametrize(
    ("holder_ttl_s", "wait_s"),
    [
        pytest.param(5, 60, id="the dead holder's lock expires"),
        pytest.param(3600, 5, id="the waiter stops waiting after wait_s"),
    ],
)
async def test_a_waiter_behind_a_lock_nobody_releases_produces_in_the_end(
    manual_clock: ManualClock, holder_ttl_s: float, wait_s: float
) -> None:
    """A lock whose holder never comes back holds a waiter until it expires or wait_s passes."""
    backend = MemoryCacheBackend(clock=manual_clock)
    await backend.acquire("k", "gone-worker", ttl_s=holder_ttl_s)
    producer = Producer(backend, "k")
    flight = SingleFlight(backend, wait_s=wait_s, poll_interval_s=0.005, clock=manual_clock)
    task = asyncio.create_task(producer.call(flight))
    await asyncio.sleep(0.03)
    runs_while_locked = producer.runs
    manual_clock.advance(5)
    assert (0, FlightResult(b"v", True)) == (runs_while_locked, await asyncio.wait_for(task, 5))


@pytest.mark.redis
async def test_a_dead_holders_lock_expires_in_redis(redis_backend: CacheBackend) -> None:
    """Redis expires a dead holder's lock by itself; the waiter then produces."""
    await redis_backend.acquire("k", "dead-worker", ttl_s=0.2)
    producer = Producer(redis_backend, "k")
    flight = SingleFlight(redis_backend, wait_s=60, poll_interval_s=0.02)
    result = await asyncio.wait_for(producer.call(flight), 5)
    assert (FlightResult(b"v", True), 1) == (result, producer.runs)


@pytest.mark.redis
async def test_store_outage_produces_without_the_lock(
    dead_backend: CacheBackend, recorder: Recorder
) -> None:
    """With Redis unreachable the producer runs (fail open) and the failure is reported."""
    producer = Producer(None, "k")
    flight = SingleFlight(dead_backend, hooks=recorder.hooks)
    result = await producer.call(flight)
    failures = recorder.of(CacheStoreFailure)
    assert (FlightResult(b"v", True), 1) == (result, len(failures))
    assert isinstance(failures[0], CacheStoreFailure)
    assert ("redis", "lock") == (failures[0].backend, failures[0].operation)


@pytest.mark.parametrize("option", ["lock_ttl_s", "wait_s", "poll_interval_s"])
def test_options_must_be_positive(option: str) -> None:
    """Zero or negative timings are a configuration error."""
    from bastion.exceptions import ConfigurationError

    options: dict[str, Any] = {option: 0}
    with pytest.raises(ConfigurationError, match=option):
        SingleFlight(None, **options)
