"""Joining bastion's resources to the application's lifespan."""

from __future__ import annotations

import pytest

from bastion._lifespan import LifespanMiddleware
from bastion.exceptions import LifespanError
from bastion.testing import lifespan
from bastion.types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


def app_with_lifespan(log: list[str], *, fail_startup: bool = False) -> object:
    """A raw ASGI app that speaks the lifespan protocol and records what happens."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "lifespan" == scope["type"]
        await receive()
        if fail_startup:
            await send({"type": "lifespan.startup.failed", "message": "app: no database"})
            return
        log.append("app started")
        await send({"type": "lifespan.startup.complete"})
        await receive()
        log.append("app stopped")
        await send({"type": "lifespan.shutdown.complete"})

    return app


def middleware(app: object, log: list[str], *, fail: str | None = None) -> LifespanMiddleware:
    """Bastion's lifespan layer with resources that record their opening and closing."""

    async def startup(scope: Scope) -> None:
        if fail == "startup":
            raise LifespanError("could not open store: connection refused")
        log.append("bastion opened")

    async def shutdown() -> None:
        log.append("bastion closed")
        if fail == "shutdown":
            raise LifespanError("could not close store")

    return LifespanMiddleware(app, startup=startup, shutdown=shutdown)  # type: ignore[arg-type]


async def test_resources_open_before_and_close_after_the_app() -> None:
    """Bastion's resources wrap the app's own lifespan on both ends."""
    log: list[str] = []
    async with lifespan(middleware(app_with_lifespan(log), log)):
        log.append("serving")
    assert ["bastion opened", "app started", "serving", "app stopped", "bastion closed"] == log


async def test_a_resource_failure_fails_startup_with_its_message() -> None:
    """The server is told why, and the app's own startup never runs."""
    log: list[str] = []
    with pytest.raises(LifespanError, match="could not open store: connection refused"):
        async with lifespan(middleware(app_with_lifespan(log), log, fail="startup")):
            pass
    assert "app started" not in log


async def test_an_app_startup_failure_closes_bastions_resources() -> None:
    """When the app refuses to start, what bastion opened is closed again."""
    log: list[str] = []
    with pytest.raises(LifespanError, match="app: no database"):
        async with lifespan(middleware(app_with_lifespan(log, fail_startup=True), log)):
            pass
    assert ["bastion opened", "bastion closed"] == log


async def test_an_app_that_raises_during_startup_is_reported() -> None:
    """An exception in the app's startup becomes a startup.failed with its text."""
    log: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("migrations missing")

    with pytest.raises(LifespanError, match="RuntimeError: migrations missing"):
        async with lifespan(middleware(app, log)):
            pass


async def test_an_app_without_lifespan_support_still_starts() -> None:
    """Apps that ignore lifespan scopes work; bastion's resources still open and close."""
    log: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("lifespan not supported")

    async with lifespan(middleware(app, log)):
        log.append("serving")
    assert ["bastion opened", "serving", "bastion closed"] == log


async def test_shutdown_failure_is_reported() -> None:
    """A resource that fails to close makes the shutdown report a failure."""
    log: list[str] = []
    with pytest.raises(LifespanError, match="could not close store"):
        async with lifespan(middleware(app_with_lifespan(log), log, fail="shutdown")):
            pass
    assert "app stopped" in log


async def test_an_error_in_the_block_surfaces_as_itself() -> None:
    """A failing assertion inside the block, or a nested lifespan's failure, is not wrapped in
    an exception group: the test sees what was raised."""
    log: list[str] = []
    with pytest.raises(KeyError, match="missing"):
        async with lifespan(middleware(app_with_lifespan(log), log)):
            raise KeyError("missing")
    assert "bastion closed" == log[-1]
    with pytest.raises(LifespanError, match="could not open store"):
        async with (
            lifespan(middleware(app_with_lifespan([]), [])),
            lifespan(middleware(app_with_lifespan([]), [], fail="startup")),
        ):
            pass
