"""Load shedding: a concurrency limit with a bounded priority queue (DESIGN §4, layer 6).

``ConcurrencyLimiter`` holds the permits: at most ``limit`` requests run, the next ones wait in a
queue served by priority (higher first), then in arrival order; a full queue makes room for a
request of higher priority by shedding its lowest-priority, most recent waiter. A permit freed
by a finishing request is handed straight to the next waiter, so a newcomer can never barge past
the queue. The limit is fixed, or an ``AdaptiveLimit`` measured from latency.

``SheddingMiddleware`` admits each request through it and answers the ones it sheds with
``503`` problem+json and ``Retry-After``. The state is **process-local** by nature: a permit is a
slot in this worker's event loop, so with N workers the service runs at most N x limit.
"""

from __future__ import annotations

import random
from bisect import insort
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._routes import RouteTable
from bastion.context import SCOPE_KEY, RequestContext
from bastion.events import Hooks, RequestShed
from bastion.exceptions import ConfigurationError
from bastion.problem import (
    TEMPORARY_REDUCED_CAPACITY,
    TEMPORARY_REDUCED_CAPACITY_TITLE,
    send_problem,
)
from bastion.protection._adaptive import AIMD, AdaptiveLimit, Gradient2
from bastion.protection._priority import Priorities, PriorityFunc, PriorityRule, route_target
from bastion.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bastion.settings import SheddingSettings

__all__ = [
    "ConcurrencyLimiter",
    "QueueOrder",
    "SheddingMiddleware",
    "TEMPORARY_REDUCED_CAPACITY",
]

QueueOrder = Literal["fifo", "lifo"]
"""Order of waiters of equal priority: oldest first, or newest first (lower latency for the
requests served under sustained overload, at the price of fairness)."""


# Waiter states: a waiter leaves WAITING exactly once, synchronously, so no lock is needed.
_WAITING, _GRANTED, _EVICTED, _LEFT = 0, 1, 2, 3
# Body bytes a queued request may buffer while bastion watches for its client to disconnect.
_LISTEN_BUFFER = 64 * 1024


class _Waiter:
    __slots__ = ("event", "priority", "state")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.state = _WAITING
        self.event = anyio.Event()


class ConcurrencyLimiter:
    """At most ``limit`` holders of a permit; the rest wait by priority, then arrival.

    Example::

        limiter = ConcurrencyLimiter(10, queue_size=50, queue_timeout_s=2.0)
        if limiter.try_acquire() or await limiter.wait(priority=5) == "granted":
            try:
                ...
            finally:
                limiter.release()

    All state changes are synchronous (no ``await`` between a check and its update), so the
    limiter is exact on one event loop without a lock. It is not thread-safe.

    Args:
        limit: a fixed limit, or an ``AdaptiveLimit`` that moves it from measured latency.
        queue_size: most requests waiting; 0 sheds every request beyond the limit at once.
        queue_timeout_s: longest a request waits for a permit.
        queue_order: ``fifo`` or ``lifo`` among waiters of equal priority.
        on_change: called after every change of the limit, the permits held or the queue
            (``Bastion`` updates its gauges from it); keep it cheap.

    Raises:
        ConfigurationError: for a limit below 1, a negative queue or a non-positive timeout.
    """

    __slots__ = (
        "_adaptive",
        "_fixed",
        "_levels",
        "_lifo",
        "_on_change",
        "_order",
        "in_flight",
        "queue_size",
        "queue_timeout_s",
        "queued",
    )

    def __init__(
        self,
        limit: int | AdaptiveLimit,
        *,
        queue_size: int = 100,
        queue_timeout_s: float = 1.0,
        queue_order: QueueOrder = "fifo",
        on_change: Callable[[ConcurrencyLimiter], None] | None = None,
    ) -> None:
        if isinstance(limit, AdaptiveLimit):
            self._adaptive: AdaptiveLimit | None = limit
            self._fixed = 0
        else:
            number: object = limit
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ConfigurationError(f"the concurrency limit must be an integer >= 1: {limit}")
            self._adaptive = None
            self._fixed = limit
        if queue_size < 0:
            raise ConfigurationError(f"queue_size must be >= 0, got {queue_size}")
        if not queue_timeout_s > 0:
            raise ConfigurationError(f"queue_timeout_s must be positive, got {queue_timeout_s}")
        if queue_order not in ("fifo", "lifo"):
            raise ConfigurationError(f"queue_order must be 'fifo' or 'lifo', got {queue_order!r}")
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self._lifo = queue_order == "lifo"
        self._on_change = on_change
        self.in_flight = 0
        """Permits held right now."""
        self.queued = 0
        """Requests waiting right now."""
        self._levels: dict[int, deque[_Waiter]] = {}
        self._order: list[int] = []  # priorities with waiters, ascending

    @property
    def limit(self) -> int:
        """The current limit (it moves when adaptive)."""
        adaptive = self._adaptive
        return adaptive.limit if adaptive is not None else self._fixed

    @property
    def adaptive(self) -> AdaptiveLimit | None:
        """The adaptive limit, or ``None`` when the limit is fixed."""
        return self._adaptive

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody waits for it; never waits."""
        if self.queued or self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        if self._on_change is not None:
            self._on_change(self)
        return True

    def release(self, sample: tuple[float, int, bool] | None = None) -> None:
        """Give a permit back and hand it to the next waiter.

        Args:
            sample: ``(seconds held, in flight when admitted, dropped)`` for the adaptive
                limit; ``None`` when the request says nothing about latency (it failed).
        """
        self.in_flight -= 1
        adaptive = self._adaptive
        if adaptive is not None and sample is not None:
            adaptive.record(*sample)
        self._dispatch()
        if self._on_change is not None:
            self._on_change(self)

    async def wait(
        self, priority: int = 0, *, timeout_s: float | None = None
    ) -> Literal["granted", "queue_full", "evicted", "queue_timeout"]:
        """Wait in the queue for a permit (call after ``try_acquire`` failed).

        Cancellation while waiting leaves the queue cleanly; a permit granted at that instant
        is released again, so none is ever lost.

        Returns:
            ``"granted"``: the caller holds a permit and must ``release()`` it. Otherwise why
            it was shed: ``"queue_full"``, ``"evicted"`` or ``"queue_timeout"``.
        """
        waiter = self.enqueue(priority)
        if waiter is None:
            return "queue_full"
        with anyio.move_on_after(self.queue_timeout_s if timeout_s is None else timeout_s):
            await self.settle(waiter)
        return self.leave(waiter)

    # -- the steps of wait(), for callers that watch something else while waiting ------------

    def enqueue(self, priority: int) -> _Waiter | None:
        """Join the queue, or ``None`` when it is full of requests of no lower priority."""
        if self.queued >= self.queue_size:
            if not self.queued or priority <= self._order[0]:
                return None
            self._evict_lowest()
        waiter = _Waiter(priority)
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            insort(self._order, priority)
        level.append(waiter)
        self.queued += 1
        # The limit may have room (a request admitted through try_acquire raced no one, but an
        # adaptive limit may just have grown): serve the queue before sleeping in it.
        self._dispatch()
        if self._on_change is not None:
            self._on_change(self)
        return waiter

    async def settle(self, waiter: _Waiter) -> None:
        """Sleep until the waiter is granted or evicted; on cancellation, leave the queue."""
        try:
            await waiter.event.wait()
        except BaseException:
            self.abandon(waiter)
            raise

    def leave(self, waiter: _Waiter) -> Literal["granted", "evicted", "queue_timeout"]:
        """Settle a waiter: what it got, leaving the queue if it was still waiting.

        A waiter still waiting (its wait timed out) is removed and reported as
        ``queue_timeout``; a granted one now holds a permit the caller must ``release()``.
        """
        state = waiter.state
        if state == _GRANTED:
            return "granted"
        if state == _EVICTED:
            return "evicted"
        if state == _WAITING:
            self._remove(waiter)
            waiter.state = _LEFT
        return "queue_timeout"

    def abandon(self, waiter: _Waiter) -> None:
        """The caller gives up (cancelled, client gone): leave the queue or return the permit."""
        if waiter.state == _GRANTED:
            waiter.state = _LEFT
            self.release()
        elif waiter.state == _WAITING:
            self._remove(waiter)
            waiter.state = _LEFT

    # -- internals --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        limit = self.limit
        order = self._order
        while order and self.in_flight < limit:
            priority = order[-1]
            level = self._levels[priority]
            waiter = level.pop() if self._lifo else level.popleft()
            if not level:
                del self._levels[priority]
                order.pop()
            self.queued -= 1
            self.in_flight += 1
            waiter.state = _GRANTED
            waiter.event.set()

    def _evict_lowest(self) -> None:
        priority = self._order[0]
        level = self._levels[priority]
        # The waiter that would be served last goes: the newest (FIFO) or the oldest (LIFO).
        waiter = level.popleft() if self._lifo else level.pop()
        if not level:
            del self._levels[priority]
            self._order.pop(0)
        self.queued -= 1
        waiter.state = _EVICTED
        waiter.event.set()

    def _remove(self, waiter: _Waiter) -> None:
        level = self._levels[waiter.priority]
        level.remove(waiter)
        if not level:
            del self._levels[waiter.priority]
            self._order.remove(waiter.priority)
        self.queued -= 1
        if self._on_change is not None:
            self._on_change(self)


class SheddingMiddleware:
    """Limits how many requests run at once; queues the rest by priority; sheds with 503.

    Example::

        app.add_middleware(
            SheddingMiddleware,
            max_concurrent=50,
            queue_size=200,
            priorities=["GET /health*=100", "/exports/*=-10"],
        )

    Each request gets a priority (``RequestContext.priority``: rules, principal, function; see
    ``Priorities``), then a permit: at once when one is free and nobody waits, else from the
    queue. A shed request gets ``503`` problem+json (``temporary-reduced-capacity``) with a
    ``Retry-After`` drawn from ``[retry_after_s, 2 x retry_after_s]`` so that shed clients do not
    all return at the same instant. A queued request whose client disconnects leaves the queue
    without running. The permit is held until the app returns: streaming responses hold it for
    their whole length (``exclude`` long-lived streams). WebSocket connections pass untouched.

    Args:
        app: the ASGI app to wrap.
        max_concurrent: the concurrency limit (the initial one when adaptive); ignored when
            ``limiter`` is given.
        limiter: a ready ``ConcurrencyLimiter`` (shared, or built with an ``AdaptiveLimit``).
        queue_size: most requests waiting (see ``ConcurrencyLimiter``).
        queue_timeout_s: longest a request waits.
        queue_order: ``fifo`` or ``lifo`` among equal priorities.
        priorities: route rules: ``PriorityRule``, ``"PATTERN=PRIORITY"`` or mappings.
        principal_priorities: priority added per principal known before admission.
        principal_source: finds the principal when no outer layer set one (see
            ``Priorities``); ``Bastion`` passes its authenticator's ``known_principal``.
        priority: a function of the scope returning the priority (``None``: keep the rules').
        exclude: requests never limited: ``[METHODS ]PATTERN`` strings, or a predicate.
        retry_after_s: the lower bound of ``Retry-After`` on a shed response, in seconds.
        hooks: where ``RequestShed`` events are published.
        clock: measures how long permits are held (for the adaptive limit) and waits.

    Raises:
        ConfigurationError: for an invalid limit, queue option, rule or pattern.
    """

    __slots__ = (
        "_clock",
        "_exclude",
        "_exclude_table",
        "_hooks",
        "_priorities",
        "_retry_after",
        "app",
        "limiter",
    )

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        max_concurrent: int = 100,
        limiter: ConcurrencyLimiter | None = None,
        queue_size: int = 100,
        queue_timeout_s: float = 1.0,
        queue_order: QueueOrder = "fifo",
        priorities: Iterable[PriorityRule | str | Mapping[str, Any]] = (),
        principal_priorities: Mapping[str, int] | None = None,
        principal_source: Callable[[Scope], str | None] | None = None,
        priority: PriorityFunc | None = None,
        exclude: Iterable[str] | Callable[[Scope], bool] = (),
        retry_after_s: int = 1,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.limiter = (
            limiter
            if limiter is not None
            else ConcurrencyLimiter(
                max_concurrent,
                queue_size=queue_size,
                queue_timeout_s=queue_timeout_s,
                queue_order=queue_order,
            )
        )
        self._priorities = Priorities(
            priorities,
            principals=principal_priorities,
            function=priority,
            principal_source=principal_source,
        )
        if callable(exclude):
            self._exclude: Callable[[Scope], bool] | None = exclude
            self._exclude_table: RouteTable[bool] = RouteTable((), False)
        else:
            self._exclude = None
            self._exclude_table = RouteTable(((pattern, True) for pattern in exclude), False)
        if isinstance(retry_after_s, bool) or not isinstance(retry_after_s, int):
            raise ConfigurationError(f"retry_after_s must be a whole number: {retry_after_s!r}")
        if retry_after_s < 1:
            raise ConfigurationError(f"retry_after_s must be at least 1, got {retry_after_s}")
        self._retry_after = retry_after_s
        self._hooks = hooks
        self._clock = clock

    @staticmethod
    def options_from_settings(
        settings: SheddingSettings,
        *,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_change: Callable[[ConcurrencyLimiter], None] | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for this middleware from ``Settings.shedding``.

        The limiter is ``options["limiter"]``.

        Raises:
            ConfigurationError: naming the ``BASTION_SHEDDING__*`` variable that is invalid.
        """
        if settings.max_concurrent is None:
            raise ConfigurationError(
                "BASTION_SHEDDING__MAX_CONCURRENT is not set: load shedding is off"
            )
        limit: int | AdaptiveLimit = settings.max_concurrent
        if settings.adaptive != "off":
            bounds = {
                "initial": settings.max_concurrent,
                "min_limit": settings.min_limit,
                "max_limit": settings.max_limit,
            }
            algorithm: Gradient2 | AIMD = (
                Gradient2(**bounds, smoothing=settings.smoothing)
                if settings.adaptive == "gradient2"
                else AIMD(**bounds, latency_threshold_s=settings.latency_threshold_s)
            )
            limit = AdaptiveLimit(
                algorithm,
                window_s=settings.window_s,
                min_samples=settings.window_min_samples,
                clock=clock,
            )
        limiter = ConcurrencyLimiter(
            limit,
            queue_size=settings.queue_size,
            queue_timeout_s=settings.queue_timeout_s,
            queue_order=settings.queue_order,
            on_change=on_change,
        )
        options: dict[str, Any] = {
            "limiter": limiter,
            "retry_after_s": settings.retry_after_s,
            "hooks": hooks,
            "clock": clock,
        }
        for field, variable in (
            ("priorities", "BASTION_SHEDDING__PRIORITIES"),
            ("principal_priorities", "BASTION_SHEDDING__PRINCIPAL_PRIORITIES"),
            ("exclude", "BASTION_SHEDDING__EXCLUDE"),
        ):
            value = getattr(settings, field)
            try:
                if field == "priorities":
                    Priorities(value)
                elif field == "principal_priorities":
                    Priorities(principals=value)
                else:
                    RouteTable(((pattern, True) for pattern in value), False)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{variable}: {exc}") from None
            options[field] = value
        return options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request through the limiter, or shed it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context: RequestContext | None = scope.get(SCOPE_KEY)
        if self._excluded(scope, context):
            await self.app(scope, receive, send)
            return
        priority = self._priorities.assign(scope, context) if self._priorities else 0
        limiter = self.limiter
        clock = self._clock
        if not limiter.try_acquire():
            waited_from = clock.monotonic()
            outcome, receive = await self._queue(limiter, priority, receive)
            if outcome != "granted":
                self._shed(scope, context, priority, outcome, clock.monotonic() - waited_from)
                if outcome != "client_disconnected":
                    await self._refuse(scope, send)
                return
        admitted = clock.monotonic()
        in_flight = limiter.in_flight
        sample: tuple[float, int, bool] | None = None
        try:
            await self.app(scope, receive, send)
            status = context.status if context is not None else None
            sample = (clock.monotonic() - admitted, in_flight, status == 503 or status == 504)
        finally:
            limiter.release(sample)

    def _excluded(self, scope: Scope, context: RequestContext | None) -> bool:
        exclude = self._exclude
        if exclude is not None:
            return exclude(scope)
        if not self._exclude_table:
            return False
        return self._exclude_table.lookup(*route_target(scope, context))

    async def _queue(
        self, limiter: ConcurrencyLimiter, priority: int, receive: Receive
    ) -> tuple[str, Receive]:
        """Wait for a permit while watching for the client to go away.

        Watching means reading ``receive``: request body messages read meanwhile (up to 64 KiB)
        are kept and handed to the app first, so the app sees the body untouched.
        """
        waiter = limiter.enqueue(priority)
        if waiter is None:
            return "queue_full", receive
        buffered: list[Message] = []
        gone = False

        async def watch(cancel_scope: anyio.CancelScope) -> None:
            nonlocal gone
            size = 0
            while size < _LISTEN_BUFFER:  # past that, stop reading: memory stays bounded
                try:
                    message = await receive()
                except Exception:  # the server failed to read; the app will find out itself
                    return
                if message["type"] == "http.disconnect":
                    gone = True
                    limiter.abandon(waiter)
                    cancel_scope.cancel()
                    return
                buffered.append(message)
                size += len(message.get("body", b""))

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch, group.cancel_scope)
                with anyio.move_on_after(limiter.queue_timeout_s):
                    await limiter.settle(waiter)
                group.cancel_scope.cancel()
        except BaseException:
            limiter.abandon(waiter)
            raise
        if gone:
            return "client_disconnected", receive
        outcome = limiter.leave(waiter)
        if not buffered:
            return outcome, receive
        return outcome, _replay(buffered, receive)

    def _shed(
        self,
        scope: Scope,
        context: RequestContext | None,
        priority: int,
        reason: str,
        waited_s: float,
    ) -> None:
        hooks = self._hooks
        if hooks is None or not hooks.wants(RequestShed):
            return
        hooks.publish(
            RequestShed(
                reason=reason,
                method=scope.get("method", "GET"),
                route=context.route if context is not None else None,
                priority=priority,
                limit=self.limiter.limit,
                waited_s=waited_s,
            )
        )

    async def _refuse(self, scope: Scope, send: Send) -> None:
        wait = random.randint(self._retry_after, 2 * self._retry_after)  # jitter, not a secret
        await send_problem(
            scope,
            send,
            503,
            type_=TEMPORARY_REDUCED_CAPACITY,
            title=TEMPORARY_REDUCED_CAPACITY_TITLE,
            detail=f"The server is at capacity; retry in {wait} s.",
            headers=[(b"retry-after", str(wait).encode())],
        )


def _replay(buffered: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that returns ``buffered`` first, then reads on."""
    pending = deque(buffered)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay
