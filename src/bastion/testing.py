"""Helpers for testing apps that use bastion.

- ``lifespan(app)``: run an ASGI app's lifespan around a block (httpx's ``ASGITransport`` does
  not), so bastion's stores and your own resources are open during the test.
- ``capture_events(hooks)``: collect the events features publish.
- ``ManualClock``: a clock tests advance instead of sleeping.

Example::

    async with lifespan(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/items/1")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio

from bastion._clock import ManualClock
from bastion.events import Event, Hooks
from bastion.exceptions import LifespanError
from bastion.types import ASGIApp, Message

__all__ = ["ManualClock", "capture_events", "lifespan"]


@asynccontextmanager
async def lifespan(app: ASGIApp, *, timeout_s: float = 10.0) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s lifespan startup before the block and its shutdown after it.

    Yields:
        The lifespan ``state`` dict the app (and bastion) filled at startup.

    Raises:
        LifespanError: the app reported a failed startup or shutdown (with its message).
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    to_app_send, to_app_receive = anyio.create_memory_object_stream[Message](2)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[Message](2)

    async def run() -> None:
        async with to_app_receive, from_app_send:
            await app(scope, to_app_receive.receive, from_app_send.send)

    failure: str | None = None
    try:
        async with anyio.create_task_group() as group, to_app_send, from_app_receive:
            group.start_soon(run)
            with anyio.fail_after(timeout_s):
                await to_app_send.send({"type": "lifespan.startup"})
                answer = await from_app_receive.receive()
            if answer["type"] == "lifespan.startup.complete":
                try:
                    yield state
                finally:
                    with anyio.fail_after(timeout_s):
                        await to_app_send.send({"type": "lifespan.shutdown"})
                        answer = await from_app_receive.receive()
                if answer["type"] != "lifespan.shutdown.complete":
                    failure = answer.get("message", "shutdown failed")
            else:
                failure = answer.get("message", "startup failed")
                group.cancel_scope.cancel()
    except BaseExceptionGroup as group_error:
        # The block's own exception (a failed assert, a nested lifespan's LifespanError) passes
        # through the task group, which wraps it; a test should see the exception it raised.
        if len(group_error.exceptions) == 1:
            raise group_error.exceptions[0] from None
        raise
    # Raised outside the task group so callers see a LifespanError, not an exception group.
    if failure is not None:
        raise LifespanError(failure)


@contextmanager
def capture_events(hooks: Hooks, event_type: type[Event] = Event) -> Iterator[list[Event]]:
    """Collect every event of ``event_type`` published on ``hooks`` while the block runs."""
    captured: list[Event] = []
    unsubscribe = hooks.subscribe(event_type, captured.append)
    try:
        yield captured
    finally:
        unsubscribe()
