"""Single-flight: concurrent misses for one key run the producer once, in a process and across.

Within a process, the first caller for a key leads and the others wait on its future. Across
processes, the leader also takes a short lock in the cache backend (set-if-absent with a TTL);
a process that finds the lock held polls for the value, with an interval that grows to a bound.

The producer's result may be unshareable (an uncacheable response, a value too large to store):
the producer then returns ``None``. Waiters in the process get ``None`` at once, and the leader
leaves an *unshared* mark on the lock, so waiters in other processes stop polling. A caller that
gets ``None`` without having led runs its own producer, outside the flight.

Failures never strand a waiter:

- the leader raises or is cancelled: its waiters get ``None`` and run their own producer, and its
  lock is released so other processes take over at once;
- the leader's process dies: its lock expires after ``lock_ttl_s`` and a waiter takes it;
- the lock is held longer than ``wait_s``: the waiter gives up waiting and produces itself;
- the store fails (an outage): the caller produces without the lock (fail open) and a
  ``CacheStoreFailure`` is published.

A waiter that is cancelled just leaves; the leader and the other waiters are not affected.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.events import CacheStoreFailure
from bastion.exceptions import ConfigurationError, StoreError

if TYPE_CHECKING:
    from bastion.cache._backend import CacheBackend
    from bastion.events import Hooks

__all__ = ["FlightResult", "SingleFlight"]

T = TypeVar("T")

_FIRST_POLL_S = 0.005


class FlightResult(NamedTuple, Generic[T]):
    """What ``SingleFlight.run`` returns."""

    value: T | None
    """The value: produced by this call, by the leader in this process, or loaded after another
    process stored it. ``None`` when unshareable: if ``led`` is False, run your own producer."""
    led: bool
    """Whether this call ran the producer (then ``value`` is exactly what it returned)."""


class SingleFlight:
    """Runs one producer per key at a time, in this process and across processes.

    Example::

        flight = SingleFlight(backend)

        async def load() -> bytes | None:
            return await backend.get(key)

        async def produce() -> bytes | None:
            value = await compute()
            await backend.set(key, value, ttl_s=60)
            return value

        value, led = await flight.run(key, produce, load=load)

    The producer stores its value itself (with its own TTL and tags) before returning it, so a
    waiter in another process finds it with ``load``.

    Args:
        backend: where the cross-process lock lives; ``None`` coordinates this process only.
        lock_ttl_s: how long a lock lives: the longest a dead leader can hold up others. Set it
            above the producer's usual run time, or a slow producer's lock expires and a waiter
            runs a second producer.
        wait_s: the longest a waiter waits for another process's value before producing itself.
        poll_interval_s: the bound of the polling interval (it starts at 5 ms and doubles).
        clock: time source for ``wait_s``.
        hooks: where ``CacheStoreFailure`` is published when the store fails.

    Raises:
        ConfigurationError: if an option is not positive.
    """

    __slots__ = (
        "_backend",
        "_clock",
        "_hooks",
        "_inflight",
        "_lock_ttl_s",
        "_poll_interval_s",
        "_wait_s",
    )

    def __init__(
        self,
        backend: CacheBackend | None,
        *,
        lock_ttl_s: float = 10.0,
        wait_s: float = 10.0,
        poll_interval_s: float = 0.05,
        clock: Clock = SYSTEM_CLOCK,
        hooks: Hooks | None = None,
    ) -> None:
        for option, value in (
            ("lock_ttl_s", lock_ttl_s),
            ("wait_s", wait_s),
            ("poll_interval_s", poll_interval_s),
        ):
            if not 0 < value < float("inf"):
                raise ConfigurationError(f"{option} must be positive and finite, not {value}")
        self._backend = backend
        self._lock_ttl_s = float(lock_ttl_s)
        self._wait_s = float(wait_s)
        self._poll_interval_s = float(poll_interval_s)
        self._clock = clock
        self._hooks = hooks
        self._inflight: dict[str, asyncio.Future[object]] = {}

    @property
    def inflight(self) -> int:
        """Keys with a producer running in this process now."""
        return len(self._inflight)

    async def run(
        self,
        key: str,
        produce: Callable[[], Awaitable[T | None]],
        *,
        load: Callable[[], Awaitable[T | None]],
    ) -> FlightResult[T]:
        """Return the value for ``key``, running ``produce`` only if no one else is.

        Args:
            key: what identifies the value; the lock is taken on it.
            produce: computes the value, stores it where ``load`` finds it, and returns it; or
                returns ``None`` when the value must not be shared.
            load: reads the stored value; ``None`` when there is none yet. Called after taking
                the lock (another process may have just stored it) and while polling.

        Raises:
            Exception: whatever ``produce`` raised, in the call that ran it.
        """
        inflight = self._inflight
        future = inflight.get(key)
        if future is not None:
            # shield: a waiter's cancellation must not cancel the future the others wait on.
            shared = await asyncio.shield(future)
            return FlightResult(shared, False)  # type: ignore[arg-type]
        future = asyncio.get_running_loop().create_future()
        inflight[key] = future
        result: object = None
        try:
            outcome = await self._lead(key, produce, load)
            result = outcome.value
            return outcome
        finally:
            del inflight[key]
            if not future.done():
                future.set_result(result)

    async def _lead(
        self,
        key: str,
        produce: Callable[[], Awaitable[T | None]],
        load: Callable[[], Awaitable[T | None]],
    ) -> FlightResult[T]:
        backend = self._backend
        if backend is None:
            return FlightResult(await produce(), True)
        token = secrets.token_hex(8)
        deadline = self._clock.monotonic() + self._wait_s
        delay_s = _FIRST_POLL_S
        while True:
            try:
                state = await backend.acquire(key, token, ttl_s=self._lock_ttl_s)
                if state == "held":
                    if self._clock.monotonic() >= deadline:
                        break  # waited long enough: produce without the lock
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, self._poll_interval_s)
                    value = await load()
                    if value is not None:
                        return FlightResult(value, False)
                    continue
            except StoreError as exc:
                self._store_failed("lock", exc)
                break
            if state == "unshared":
                break
            # Ours. Another process may have stored the value and released the lock between
            # our caller's lookup (or our last poll) and now.
            try:
                value = await load()
            except StoreError as exc:
                self._store_failed("get", exc)
                value = None
            if value is not None:
                await self._release(key, token, shared=True)
                return FlightResult(value, False)
            return await self._produce_locked(key, token, produce)
        return FlightResult(await produce(), True)

    async def _produce_locked(
        self, key: str, token: str, produce: Callable[[], Awaitable[T | None]]
    ) -> FlightResult[T]:
        value: T | None = None
        produced = False
        try:
            value = await produce()
            produced = True
        finally:
            # A failed or cancelled producer releases plainly: the next process takes over.
            await self._release(key, token, shared=not produced or value is not None)
        return FlightResult(value, True)

    async def _release(self, key: str, token: str, *, shared: bool) -> None:
        backend = self._backend
        if backend is None:  # pragma: no cover - only called after a lock was taken
            return
        try:
            await backend.release(key, token, unshared_ttl_s=None if shared else self._lock_ttl_s)
        except StoreError as exc:
            # The lock expires by itself; at worst a waiter waits lock_ttl_s.
            self._store_failed("unlock", exc)

    def _store_failed(self, operation: str, error: StoreError) -> None:
        hooks = self._hooks
        if hooks is not None and self._backend is not None:
            hooks.publish(
                CacheStoreFailure(backend=self._backend.name, operation=operation, error=str(error))
            )
