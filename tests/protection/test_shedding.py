"""Load shedding: exact concurrency, a priority queue, 503 + Retry-After, and no leaked permits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from bastion.context import RequestContextMiddleware
from bastion.events import Event, Hooks, RequestShed
from bastion.exceptions import ConfigurationError
from bastion.protection import ConcurrencyLimiter, SheddingMiddleware
from bastion.types import ASGIApp, Message, Receive, Scope, Send
from tests.asgi import RawResponse, http_scope
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


E = TypeVar("E", bound=Event)


def recorder(kind: type[E]) -> tuple[Hooks, list[E]]:
    """Hooks, and the list of the ``kind`` events published to them."""
    hooks = Hooks()
    events: list[E] = []
    hooks.subscribe(kind, events.append)
    return hooks, events


def queued(limiter: ConcurrencyLimiter, count: int) -> Callable[[], bool]:
    """A predicate: ``count`` requests are waiting in ``limiter``'s queue."""
    return lambda: limiter.queued == count


class Gate:
    """A raw ASGI app whose requests block until the test opens the gate.

    It records how many requests run at once (and the most ever), the order requests entered
    it (by path and query), and the request bodies it read.
    """

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.running = 0
        self.most = 0
        self.entered: list[str] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.entered.append(scope["path"] + "?" + scope["query_string"].decode())
        try:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            self.bodies.append(body)
            await self.opened.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.running -= 1


async def call(app: ASGIApp, scope: Scope, body: bytes = b"") -> RawResponse:
    """One request as a server sends it: after the body, ``receive`` blocks until the response
    is complete (it would return ``http.disconnect`` only once the client is gone)."""
    response = RawResponse()
    done = anyio.Event()
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        response.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    return response


async def _serve(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    await app(scope, receive, send)


def shedder(app: ASGIApp, **options: Any) -> tuple[ASGIApp, SheddingMiddleware]:
    """``app`` behind ``SheddingMiddleware(**options)`` behind the request context."""
    middleware = SheddingMiddleware(app, **options)
    return RequestContextMiddleware(middleware), middleware


async def test_fifty_slow_requests_never_run_more_than_ten_at_once() -> None:
    """Limit 10, queue 20, 50 concurrent slow requests: 10 run, 20 wait, 20 get 503 at once."""
    gate = Gate()
    app, middleware = shedder(gate, max_concurrent=10, queue_size=20, queue_timeout_s=60)
    responses: list[RawResponse] = []

    async def one(index: int) -> None:
        responses.append(await call(app, http_scope("/slow", query_string=f"i={index}".encode())))

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(one, index)
        await wait_until(lambda: gate.running == 10 and len(responses) == 20)
        assert 20 == middleware.limiter.queued
        assert [503] * 20 == [response.status for response in responses]
        gate.opened.set()

    assert 10 == gate.most
    assert 30 == [response.status for response in responses].count(200)
    assert 0 == middleware.limiter.in_flight
    assert 0 == middleware.limiter.queued
    refused = [response for response in responses if response.status == 503]
    assert {"1", "2"} >= {response.headers["retry-after"] for response in refused}
    problem = refused[0].json()
    assert 503 == problem["status"]
    assert problem["type"].endswith("#temporary-reduced-capacity")
    assert "application/problem+json" == refused[0].headers["content-type"]


async def test_with_room_in_the_queue_every_request_is_served_ten_at_a_time() -> None:
    """A queue large enough for the burst: all 50 succeed, still never more than 10 at once."""
    gate = Gate()
    app, middleware = shedder(gate, max_concurrent=10, queue_size=100, queue_timeout_s=60)
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await call(app, http_scope("/slow"))).status)

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one)
        await wait_until(lambda: gate.running == 10 and middleware.limiter.queued == 40)
        gate.opened.set()

    assert [200] * 50 == statuses
    assert 10 == gate.most


async def test_high_priority_requests_pass_queued_low_priority_ones() -> None:
    """Low-priority requests queued first still go after the high-priority ones, FIFO within."""
    gate = Gate()
    app, middleware = shedder(
        gate,
        max_concurrent=1,
        queue_size=100,
        queue_timeout_s=60,
        priorities=["/high=10", "/low=-10"],
    )
    limiter = middleware.limiter

    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http_scope("/first"))
        await wait_until(lambda: gate.running == 1)
        for index in range(5):
            group.start_soon(call, app, http_scope("/low", query_string=f"i={index}".encode()))
            await wait_until(queued(limiter, index + 1))
        for index in range(5):
            group.start_soon(call, app, http_scope("/high", query_string=f"i={index}".encode()))
            await wait_until(queued(limiter, index + 6))
        gate.opened.set()

    expected = ["/first?"] + [f"/high?i={i}" for i in range(5)] + [f"/low?i={i}" for i in range(5)]
    assert expected == gate.entered


async def test_a_full_queue_sheds_its_lowest_priority_request_for_a_higher_one() -> None:
    """When the queue is full, a more important newcomer takes the place of the least one."""
    gate = Gate()
    hooks, shed = recorder(RequestShed)
    app, middleware = shedder(
        gate,
        max_concurrent=1,
        queue_size=2,
        queue_timeout_s=60,
        priorities=["/high=10"],
        hooks=hooks,
    )
    limiter = middleware.limiter
    results: dict[str, int] = {}

    async def one(path: str, name: str) -> None:
        results[name] = (await call(app, http_scope(path))).status

    async with anyio.create_task_group() as group:
        group.start_soon(one, "/first", "first")
        await wait_until(lambda: gate.running == 1)
        group.start_soon(one, "/low", "low-1")
        await wait_until(lambda: limiter.queued == 1)
        group.start_soon(one, "/low", "low-2")
        await wait_until(lambda: limiter.queued == 2)
        group.start_soon(one, "/low", "low-3")  # queue full, same priority: shed at once
        await wait_until(lambda: "low-3" in results)
        group.start_soon(one, "/high", "high")  # evicts low-2, the newest of the lowest
        await wait_until(lambda: "low-2" in results)
        gate.opened.set()

    assert {"first": 200, "low-1": 200, "low-2": 503, "low-3": 503, "high": 200} == results
    assert ["queue_full", "evicted"] == [event.reason for event in shed]
    assert [0, 0] == [event.priority for event in shed]


async def test_a_request_that_waits_too_long_is_shed() -> None:
    """Past queue_timeout_s in the queue, the request gets 503 and leaves the queue."""
    gate = Gate()
    hooks, shed = recorder(RequestShed)
    app, middleware = shedder(gate, max_concurrent=1, queue_timeout_s=0.01, hooks=hooks)

    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http_scope("/first"))
        await wait_until(lambda: gate.running == 1)
        response = await call(app, http_scope("/second"))
        gate.opened.set()

    assert 503 == response.status
    assert ["queue_timeout"] == [event.reason for event in shed]
    assert shed[0].waited_s > 0
    assert (0, 0) == (middleware.limiter.in_flight, middleware.limiter.queued)


async def test_a_client_that_disconnects_while_queued_leaves_the_queue() -> None:
    """A queued request whose client goes away never runs, and frees its place at once."""
    gate = Gate()
    hooks, shed = recorder(RequestShed)
    app, middleware = shedder(gate, max_concurrent=1, queue_timeout_s=60, hooks=hooks)
    limiter = middleware.limiter
    gone = anyio.Event()
    sent: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http_scope("/first"))
        await wait_until(lambda: gate.running == 1)
        group.start_soon(_serve, app, http_scope("/leaving"), receive, send)
        await wait_until(lambda: limiter.queued == 1)
        gone.set()
        await wait_until(lambda: limiter.queued == 0)
        gate.opened.set()

    assert ["/first?"] == gate.entered
    assert [] == sent
    assert ["client_disconnected"] == [event.reason for event in shed]
    assert 0 == limiter.in_flight


async def test_a_queued_request_keeps_its_body() -> None:
    """Body chunks read while watching for a disconnect reach the app unchanged, in order."""
    gate = Gate()
    app, middleware = shedder(gate, max_concurrent=1, queue_timeout_s=60)
    chunks = [b"abc", b"def", b"ghi"]

    async def receive() -> Message:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        pass

    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http_scope("/first"))
        await wait_until(lambda: gate.running == 1)
        group.start_soon(_serve, app, http_scope("/upload", method="POST"), receive, send)
        await wait_until(lambda: middleware.limiter.queued == 1 and not chunks)
        gate.opened.set()

    assert [b"", b"abcdefghi"] == gate.bodies


async def test_a_handler_that_raises_gives_its_permit_back() -> None:
    """An exception in the app releases the permit; the next request runs."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    app, middleware = shedder(broken, max_concurrent=1, queue_size=0)
    with pytest.raises(RuntimeError):
        await call(app, http_scope("/"))

    assert 0 == middleware.limiter.in_flight


async def test_a_cancelled_handler_gives_its_permit_back() -> None:
    """A request cancelled mid-handler (server shutdown, client gone) releases its permit."""
    gate = Gate()
    app, middleware = shedder(gate, max_concurrent=1, queue_size=0)

    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http_scope("/"))
        await wait_until(lambda: gate.running == 1)
        group.cancel_scope.cancel()

    assert 0 == middleware.limiter.in_flight
    assert 200 == (await _served(app, gate)).status


async def _served(app: ASGIApp, gate: Gate) -> RawResponse:
    gate.opened.set()
    return await call(app, http_scope("/"))


async def test_excluded_routes_are_never_queued() -> None:
    """Patterns in ``exclude`` bypass the limit, even when it is full."""
    gate = Gate()
    app, middleware = shedder(gate, max_concurrent=1, queue_size=0, exclude=["/events*"])

    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http_scope("/first"))
        group.start_soon(call, app, http_scope("/events/stream"))
        await wait_until(lambda: gate.running == 2)
        gate.opened.set()

    assert 2 == gate.most
    assert 0 == middleware.limiter.in_flight


async def test_an_exclude_predicate_decides_by_scope() -> None:
    """``exclude`` may be a function of the scope instead of patterns."""
    gate = Gate()
    gate.opened.set()
    app, _ = shedder(gate, max_concurrent=1, queue_size=0, exclude=lambda scope: True)

    assert 200 == (await call(app, http_scope("/"))).status


async def test_websockets_and_lifespan_pass_untouched() -> None:
    """Only HTTP requests take permits."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = SheddingMiddleware(app, max_concurrent=1, queue_size=0)
    for kind in ("websocket", "lifespan"):
        await middleware({"type": kind}, _never_receive, _ignore_send)

    assert ["websocket", "lifespan"] == seen
    assert 0 == middleware.limiter.in_flight


async def _never_receive() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _ignore_send(message: Message) -> None:
    pass


async def test_the_limiter_serves_by_priority_then_arrival() -> None:
    """Waiters of higher priority are granted first; equal priorities in arrival order."""
    limiter = ConcurrencyLimiter(1, queue_timeout_s=60)
    assert limiter.try_acquire()
    granted: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        assert "granted" == await limiter.wait(priority)
        granted.append(name)
        limiter.release()

    async with anyio.create_task_group() as group:
        for count, (name, priority) in enumerate(
            [("a0", 0), ("b5", 5), ("c0", 0), ("d5", 5), ("e1", 1)], start=1
        ):
            group.start_soon(waiter, name, priority)
            await wait_until(queued(limiter, count))
        limiter.release()

    assert ["b5", "d5", "e1", "a0", "c0"] == granted
    assert 0 == limiter.in_flight


async def test_lifo_serves_the_newest_of_a_priority_first() -> None:
    """queue_order='lifo': among equal priorities, the most recent waiter goes first."""
    limiter = ConcurrencyLimiter(1, queue_timeout_s=60, queue_order="lifo")
    assert limiter.try_acquire()
    granted: list[int] = []

    async def waiter(index: int) -> None:
        assert "granted" == await limiter.wait()
        granted.append(index)
        limiter.release()

    async with anyio.create_task_group() as group:
        for index in range(3):
            group.start_soon(waiter, index)
            await wait_until(queued(limiter, index + 1))
        limiter.release()

    assert [2, 1, 0] == granted


async def test_a_request_cancelled_as_it_is_granted_returns_the_permit() -> None:
    """A permit handed to a queued request that is cancelled before it resumes is not lost."""
    gate = Gate()
    app, middleware = shedder(gate, max_concurrent=1, queue_timeout_s=60)
    limiter = middleware.limiter
    assert limiter.try_acquire()  # the permit the queued request will be handed
    cancel_scope = anyio.CancelScope()

    async def cancellable() -> None:
        with cancel_scope:
            await call(app, http_scope("/queued"))

    async with anyio.create_task_group() as group:
        group.start_soon(cancellable)
        await wait_until(lambda: limiter.queued == 1)
        limiter.release()  # hands the permit to the queued request...
        cancel_scope.cancel()  # ...which is cancelled before it runs again

    assert (0, 0, 0) == (limiter.in_flight, limiter.queued, gate.running)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """Cancellation while waiting removes the waiter; nobody is granted on its behalf."""
    limiter = ConcurrencyLimiter(1, queue_timeout_s=60)
    assert limiter.try_acquire()

    async with anyio.create_task_group() as group:
        group.start_soon(limiter.wait)
        await wait_until(lambda: limiter.queued == 1)
        group.cancel_scope.cancel()

    assert (1, 0) == (limiter.in_flight, limiter.queued)
    limiter.release()
    assert 0 == limiter.in_flight


async def test_many_tasks_never_exceed_the_limit() -> None:
    """A stress test: 500 tasks through a limit of 7 with a small queue; the count stays exact."""
    limiter = ConcurrencyLimiter(7, queue_size=20, queue_timeout_s=60)
    running = most = 0
    outcomes: list[str] = []

    async def worker(index: int) -> None:
        nonlocal running, most
        if limiter.try_acquire():
            outcome = "granted"
        else:
            outcome = await limiter.wait(index % 3)
        outcomes.append(outcome)
        if outcome != "granted":
            return
        running += 1
        most = max(most, running)
        await anyio.lowlevel.checkpoint()
        running -= 1
        limiter.release()

    async with anyio.create_task_group() as group:
        for index in range(500):
            group.start_soon(worker, index)

    assert 7 == most
    assert 500 == len(outcomes)
    assert (0, 0) == (limiter.in_flight, limiter.queued)


def test_the_limiter_reports_every_change() -> None:
    """on_change sees the limit, permits and queue after every change (for the gauges)."""
    seen: list[tuple[int, int, int]] = []
    limiter = ConcurrencyLimiter(
        2, on_change=lambda it: seen.append((it.limit, it.in_flight, it.queued))
    )
    limiter.try_acquire()
    limiter.try_acquire()
    limiter.release()

    assert [(2, 1, 0), (2, 2, 0), (2, 1, 0)] == seen


@pytest.mark.parametrize(
    "options",
    [{"limit": 0}, {"limit": 1, "queue_size": -1}, {"limit": 1, "queue_timeout_s": 0}],
)
def test_invalid_limiter_options_fail_at_construction(options: dict[str, Any]) -> None:
    """A limit below 1, a negative queue or a zero timeout is a configuration error."""
    with pytest.raises(ConfigurationError):
        ConcurrencyLimiter(**options)


def test_retry_after_must_be_a_whole_positive_number() -> None:
    """Retry-After is sent in whole seconds; anything else fails at construction."""
    with pytest.raises(ConfigurationError):
        SheddingMiddleware(_ignore_app, retry_after_s=0)


async def _ignore_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass
