"""The driver: plays the server's part for one app, in one process, with no network.

It does what uvicorn does around an ASGI app, minus sockets and HTTP parsing: runs the app's
lifespan (startup before the first request, shutdown at the end), copies the lifespan state into
every request scope, builds each request from a prebuilt scope (copied per request, with a fresh
header list, since middleware may modify it), hands the request body over once, and answers later
``receive()`` calls with ``http.disconnect`` only after the response is complete (as uvicorn does;
answering earlier would cancel ``BaseHTTPMiddleware`` apps).

``worker_main`` runs one app in its own process and serves commands from the coordinator
(``inprocess.py``) over a pipe. One process per app, because apps are not independent inside one
process: slowapi's default storage (``limits`` ``MemoryStorage``) runs a ``threading.Timer`` every
10 ms, which competes for the GIL with whatever app runs next; prometheus, logging and contextvars
are process-global too. In its own process, an app's background work is billed to that app.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import gzip
import json
import pstats
import time
import traceback
from typing import TYPE_CHECKING, Any

from benchmarks.apps import APPS

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from starlette.types import ASGIApp, Message

    from benchmarks.scenarios import Scenario

__all__ = ["PRIMING_REQUESTS", "Command", "LifespanError", "worker_main"]

Command = tuple[str, int]
"""What the coordinator asks a worker: ``("warmup", requests)`` -> calibration ns/request,
``("batch", requests)`` -> (wall ns, CPU ns), ``("calls", requests)`` -> calls per request,
``("stop", 0)`` -> ``None``. Every answer is ``("ok", result, the worker's CPU seconds so far)``
or ``("error", traceback, 0.0)``; the first message, unasked, is ``("ok", loop class name, ...)``
once the app has started and answered its first request correctly."""


PRIMING_REQUESTS = 5
"""Untimed requests served before every timed batch."""


class LifespanError(RuntimeError):
    """An app refused to start or stop."""


class _Lifespan:
    """Drives an app's lifespan protocol, as a server does."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _answer(self) -> Message:
        """The app's next message, or its exception if the lifespan task ended instead."""
        assert self._task is not None
        getter = asyncio.create_task(self._from_app.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        exc = self._task.exception()
        raise LifespanError(f"the app's lifespan ended without answering: {exc!r}") from exc

    async def _run(self, scope: dict[str, Any]) -> None:
        await self._app(scope, self._receive, self._send)

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the app to complete it."""
        scope: dict[str, Any] = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "state": self._state,
        }
        self._task = asyncio.create_task(self._run(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer["type"] != "lifespan.startup.complete":
            raise LifespanError(f"startup failed: {answer.get('message', answer)}")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app to complete it and return."""
        await self._to_app.put({"type": "lifespan.shutdown"})
        answer = await self._answer()
        assert self._task is not None
        await self._task
        if answer["type"] != "lifespan.shutdown.complete":
            raise LifespanError(f"shutdown failed: {answer.get('message', answer)}")


class _Exchange:
    """One request's ``receive`` and ``send``: the body once, then disconnect after the response."""

    __slots__ = ("_body", "_waiter", "complete", "messages")

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.messages: list[Message] = []

    async def receive(self) -> Message:
        body = self._body
        if body is not None:
            self._body = None
            return {"type": "http.request", "body": body, "more_body": False}
        if not self.complete:
            # Like uvicorn: a client that sent its request stays connected until it has the
            # response. Answering "disconnect" right away would cancel BaseHTTPMiddleware apps.
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)


def _request_scope(scenario: Scenario) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
    """The scope template uvicorn would build for the scenario, and its header list."""
    headers = [(b"host", b"127.0.0.1:8000")]
    headers += [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in scenario.headers
    ]
    if scenario.body:
        headers.append((b"content-length", str(len(scenario.body)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 54321),
        "scheme": "http",
        "method": scenario.method,
        "root_path": "",
        "path": scenario.path,
        "raw_path": scenario.path.encode("latin-1"),
        "query_string": scenario.query_string.encode("latin-1"),
        "headers": headers,
    }
    return scope, headers


class _LogWriter:
    """bastion's log writer thread, seen from the driver: wait for it, read its CPU clock.

    bastion's access log only queues a request's data; the writer thread formats and writes the
    lines, waking every 100 ms or once 256 lines wait. A batch is billed for that work by adding
    the writer thread's CPU time (its own clock, ``pthread_getcpuclockid``) from the start of
    the batch until every line of the batch is written. Not billed: the wall time of waiting for
    the writer at the end of each batch, which is two thread wake-ups (about 110 µs of CPU on
    this project's VM even with nothing to write). A server pays for those once per 256 lines or
    100 ms, not once per batch of a few dozen requests, and they are no work of the app's.
    """

    __slots__ = ("_clock", "flush")

    def __init__(self, flush: Callable[[], object], thread_id: int) -> None:
        self.flush = flush
        self._clock = time.pthread_getcpuclockid(thread_id)

    def cpu_ns(self) -> int:
        """CPU nanoseconds the writer thread has used so far."""
        return time.clock_gettime_ns(self._clock)


def _log_writer(state: dict[str, Any]) -> _LogWriter | None:
    """bastion's log writer thread, if the app has one running."""
    bastion = state.get("bastion")
    setup = getattr(getattr(bastion, "observability", None), "logging", None)
    sink = getattr(setup, "sink", None)
    thread = getattr(sink, "_writer", None)
    if setup is None or sink is None or thread is None or thread.ident is None:
        return None
    return _LogWriter(setup.flush, thread.ident)


class _Target:
    """One started app and what is needed to send it requests fast."""

    __slots__ = ("app", "body", "expected_status", "headers", "lifespan", "name", "scope", "state")

    def __init__(self, name: str, app: ASGIApp, scenario: Scenario) -> None:
        self.name = name
        self.app = app
        self.state: dict[str, Any] = {}
        self.lifespan = _Lifespan(app, self.state)
        self.scope, self.headers = _request_scope(scenario)
        self.body = scenario.body
        self.expected_status = scenario.expected_status

    async def serve(self, count: int) -> tuple[int, int]:
        """Send ``count`` sequential requests; return the elapsed wall and CPU nanoseconds.

        Raises:
            AssertionError: a response was incomplete or had an unexpected status.
        """
        app, template, headers, state, body = (
            self.app,
            self.scope,
            self.headers,
            self.state,
            self.body,
        )
        bad = 0
        writer = _log_writer(state)
        if writer is not None:
            writer.flush()  # lines of earlier requests are not this batch's cost
            writer_started = writer.cpu_ns()
        cpu_started = time.process_time_ns()
        started = time.perf_counter_ns()
        for _ in range(count):
            scope = template.copy()
            scope["headers"] = headers.copy()  # apps may mutate the header list
            scope["state"] = state.copy()
            exchange = _Exchange(body)
            await app(scope, exchange.receive, exchange.send)
            if not exchange.complete or exchange.messages[0]["status"] != self.expected_status:
                bad += 1
        elapsed = time.perf_counter_ns() - started
        cpu_elapsed = time.process_time_ns() - cpu_started
        if writer is not None:
            # The writer's CPU while the batch ran is in the process time already; what it
            # uses to write the batch's remaining lines is added to both columns (see _LogWriter).
            writer_during = writer.cpu_ns() - writer_started
            writer.flush()
            writer_after = writer.cpu_ns() - writer_started - writer_during
            elapsed += writer_after
            cpu_elapsed += writer_after
        if bad:
            raise AssertionError(f"{self.name}: {bad} of {count} responses were wrong")
        return elapsed, cpu_elapsed

    async def count_calls(self, count: int) -> float:
        """Function calls per request over ``count`` requests, counted by ``cProfile``."""
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            await self.serve(count)
        finally:
            profiler.disable()
        # The harness's own calls (serve's loop, receive/send) are in every app's count alike.
        return pstats.Stats(profiler).total_calls / count  # type: ignore[attr-defined,no-any-return]

    async def check(self, scenario: Scenario) -> None:
        """Send one request and check its response against the scenario.

        Raises:
            AssertionError: with what was expected and what came back.
        """
        scope = self.scope.copy()
        scope["headers"] = self.headers.copy()
        scope["state"] = self.state.copy()
        exchange = _Exchange(self.body)
        await self.app(scope, exchange.receive, exchange.send)
        start = exchange.messages[0]
        if start["status"] != scenario.expected_status:
            raise AssertionError(f"{self.name}: status {start['status']}")
        if scenario.expected_json is None:
            return
        body = b"".join(m.get("body", b"") for m in exchange.messages[1:])
        headers = {k.decode("latin-1").lower(): v for k, v in start.get("headers", [])}
        if headers.get("content-encoding") == b"gzip":
            body = gzip.decompress(body)
        if json.loads(body) != scenario.expected_json:
            raise AssertionError(f"{self.name}: unexpected body {body!r}")


async def _serve_commands(target: _Target, connection: Connection) -> None:
    while True:
        command, count = connection.recv()
        result: object
        if command == "warmup":
            calibration = max(count // 5, 1)
            await target.serve(count - calibration)
            wall_ns, _ = await target.serve(calibration)
            result = wall_ns / calibration
            # Everything built so far (the app, the framework, caches) is long-lived: move it out
            # of the collector's way, so a gc.collect() between batches costs microseconds.
            gc.collect()
            gc.freeze()
        elif command == "batch":
            # Collect the garbage of the previous batch now, so that it is not billed to this
            # one; collections this batch triggers itself stay in its time (they are its cost).
            gc.collect()
            # While other apps ran, this process's code and data left the CPU caches: a few
            # untimed requests bring them back, so the batch measures the steady state.
            await target.serve(PRIMING_REQUESTS)
            result = await target.serve(count)
        elif command == "calls":
            result = await target.count_calls(count)
        elif command == "stop":
            return  # answered once the lifespan has shut down
        else:
            raise ValueError(f"unknown command {command!r}")
        connection.send(("ok", result, time.process_time()))


async def _worker(name: str, scenario: Scenario, connection: Connection) -> None:
    target = _Target(name, APPS[name].factory(), scenario)
    await target.lifespan.startup()
    try:
        await target.check(scenario)
        loop = type(asyncio.get_running_loop()).__name__
        connection.send(("ok", loop, time.process_time()))
        await _serve_commands(target, connection)
    finally:
        await target.lifespan.shutdown()
    connection.send(("ok", None, time.process_time()))


def worker_main(name: str, scenario: Scenario, connection: Connection) -> None:
    """Build app ``name``, start it, and serve the coordinator's commands until ``stop``.

    Runs on a stock asyncio event loop (never uvloop, whatever is installed), so the numbers are
    Python's cost, not a C event loop's. See ``Command`` for the protocol.
    """
    try:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(_worker(name, scenario, connection))
    except BaseException:  # reported to the coordinator, which stops the run with it
        connection.send(("error", traceback.format_exc(), 0.0))
    finally:
        connection.close()
