"""Graceful shutdown: not ready first, then refuse new requests, drain in-flight, then close."""

from __future__ import annotations

import inspect
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion._shutdown import ShutdownCoordinator
from bastion.testing import lifespan
from tests.asgi import client_for
from tests.servers import serve


def drained_app(**shutdown: Any) -> tuple[FastAPI, Bastion, anyio.Event]:
    """A FastAPI app with a handler that waits for the returned event."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, shutdown=shutdown, health={"cache_s": 0}))
    release = anyio.Event()

    @app.get("/wait")
    async def wait() -> dict[str, bool]:
        await release.wait()
        return {"done": True}

    return app, bastion, release


@pytest.mark.anyio
async def test_drain_waits_for_requests_in_flight() -> None:
    """Lifespan shutdown closes nothing while a request is still running, then finishes it."""
    app, bastion, release = drained_app()
    order: list[str] = []
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            anyio.create_task_group() as group,
        ):

            async def request() -> None:
                response = await client.get("/wait")
                order.append(f"request {response.status_code}")

            async def drain() -> None:
                left = await bastion.shutdown_coordinator.drain()
                order.append(f"drained, {left} left")

            group.start_soon(request)
            await anyio.wait_all_tasks_blocked()
            assert 1 == bastion.shutdown_coordinator.in_flight
            group.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            assert [] == order
            release.set()
    assert ["request 200", "drained, 0 left"] == order


@pytest.mark.anyio
async def test_drain_gives_up_at_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """A request that outlives drain_timeout_s is reported, and shutdown goes on."""
    app, bastion, release = drained_app(drain_timeout_s=0.05)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            anyio.create_task_group() as group,
        ):
            group.start_soon(client.get, "/wait")
            await anyio.wait_all_tasks_blocked()
            assert 1 == await bastion.shutdown_coordinator.drain()
            release.set()
    assert "drain deadline" in caplog.text


@pytest.mark.anyio
async def test_drain_waits_for_background_work_the_requests_started() -> None:
    """Work started with spawn() is drained like a request, within the same deadline."""
    coordinator = ShutdownCoordinator(pre_stop_delay_s=0, drain_timeout_s=5)
    release = anyio.Event()
    finished: list[str] = []

    async def refresh() -> None:
        await release.wait()
        finished.append("refresh")

    async def drain() -> None:
        left = await coordinator.drain()
        finished.append(f"drained, {left} left, {coordinator.background} running")

    task = coordinator.spawn(refresh(), name="refresh")
    async with anyio.create_task_group() as group:
        group.start_soon(drain)
        await anyio.wait_all_tasks_blocked()
        assert ([], 1) == (finished, coordinator.background)
        release.set()
    assert task is not None
    assert ["refresh", "drained, 0 left, 0 running"] == finished


@pytest.mark.anyio
async def test_no_background_work_starts_once_requests_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """During shutdown spawn() declines, and closes the coroutine (no 'never awaited' warning);
    work that outlives the deadline is reported, and the drain goes on."""
    coordinator = ShutdownCoordinator(pre_stop_delay_s=0, drain_timeout_s=0.05)
    hang = anyio.Event()

    async def hangs() -> None:
        await hang.wait()

    running = coordinator.spawn(hangs(), name="hangs")
    left = await coordinator.drain()

    async def late() -> None:
        raise AssertionError("never started")

    work = late()
    declined = coordinator.spawn(work, name="late")
    closed = inspect.getcoroutinestate(work) == inspect.CORO_CLOSED
    assert (0, None, True) == (left, declined, closed)
    assert "1 background tasks running" in caplog.text
    assert running is not None
    running.cancel()


@pytest.mark.anyio
async def test_while_draining_readiness_fails_and_new_requests_are_refused() -> None:
    """Ready turns 503 as soon as draining begins; after the pre-stop phase new requests get a
    503 problem with Connection: close, while the health endpoints keep answering."""
    app, bastion, release = drained_app()
    release.set()
    async with client_for(app) as client:
        assert 200 == (await client.get("/_bastion/health/ready")).status_code
        bastion.shutdown_coordinator.begin_draining()
        ready = await client.get("/_bastion/health/ready")
        still_served = await client.get("/wait")
        bastion.shutdown_coordinator.refusing = True
        refused = await client.get("/wait")
        live = await client.get("/_bastion/health/live")
    assert (503, "draining") == (ready.status_code, ready.json()["output"])
    assert 200 == still_served.status_code
    assert (503, "close", "1") == (
        refused.status_code,
        refused.headers["connection"],
        refused.headers["retry-after"],
    )
    assert "application/problem+json" == refused.headers["content-type"]
    assert 200 == live.status_code


@pytest.mark.anyio
async def test_sigterm_turns_not_ready_then_hands_over_after_the_pre_stop_delay() -> None:
    """The server's own SIGTERM handler runs only after the pre-stop delay; readiness fails at
    once."""
    calls: list[int] = []
    handed_over = anyio.Event()

    def server_handler(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)
        handed_over.set()

    original = signal.signal(signal.SIGTERM, server_handler)
    coordinator = ShutdownCoordinator(pre_stop_delay_s=0.05, drain_timeout_s=1.0)
    drained: list[bool] = []
    coordinator.on_drain(lambda: drained.append(True))
    try:
        assert coordinator.install_signal_hook()
        signal.raise_signal(signal.SIGTERM)
        await anyio.lowlevel.checkpoint()
        assert ([True], [], False) == (drained, calls, coordinator.refusing)
        with anyio.fail_after(2):
            await handed_over.wait()
        assert ([signal.SIGTERM], True) == (calls, coordinator.refusing)
        coordinator.uninstall_signal_hook()
        assert server_handler == signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.mark.slow
def test_sigterm_under_load_loses_no_request() -> None:
    """A real uvicorn gets SIGTERM with 8 slow requests in flight: readiness is 503 while the
    server still accepts connections, every in-flight request completes, the server exits."""
    with serve("tests.servers.slow_app:app", arguments=(), ready_path="/_bastion/health/ready") as (
        url,
        process,
    ):
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(httpx.get, f"{url}/slow", timeout=10) for _ in range(8)]
            time.sleep(0.3)  # let the requests reach the handler
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            # Within the 1 s pre-stop delay: still accepting connections, but not ready.
            ready = httpx.get(f"{url}/_bastion/health/ready", timeout=2)
            statuses = [future.result().status_code for future in futures]
        assert 503 == ready.status_code
        assert [200] * 8 == statuses
        process.wait(timeout=15)
        assert process.returncode in (0, -signal.SIGTERM)


class BrokenObserver:
    """Telemetry that fails when a request starts (``/start``) or finishes (``/finish``)."""

    def request_started(self, context: Any, scope: Any) -> None:
        if scope["path"] == "/start":
            raise RuntimeError("observer broke on start")

    def request_finished(self, context: Any, scope: Any, state: Any, error: Any) -> None:
        if scope["path"] == "/finish":
            raise RuntimeError("observer broke on finish")


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/start", "/finish"])
async def test_a_failing_observer_never_leaves_a_request_in_flight(path: str) -> None:
    """However telemetry fails, the request leaves the in-flight count: drain does not wait."""
    from bastion._ops import OpsRoutes
    from bastion._pipeline import PipelineMiddleware
    from bastion.context import ContextBuilder

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def nothing(*args: Any) -> None:
        return None

    coordinator = ShutdownCoordinator(pre_stop_delay_s=0.0, drain_timeout_s=5.0)
    layer = PipelineMiddleware(
        app,
        startup=nothing,
        shutdown=nothing,
        context=ContextBuilder(),
        hooks=None,
        ops_prefix=None,
        ops_routes=OpsRoutes(),
        coordinator=coordinator,
        observer=BrokenObserver(),
    )
    transport = httpx.ASGITransport(app=layer, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path)
    # A failed start is the boundary's 500; a failed finish comes after the response.
    assert (500 if path == "/start" else 204) == response.status_code
    assert 0 == coordinator.in_flight
    with anyio.fail_after(1):
        assert 0 == await coordinator.drain()
