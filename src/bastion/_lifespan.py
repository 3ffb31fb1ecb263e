"""Joins bastion's resources to the application's lifespan, for any ASGI framework.

The middleware speaks the lifespan protocol with the server itself and drives the app's own
lifespan as a child, so the order is always: bastion opens its resources, then the app starts
(and can use them); on shutdown the app stops first, then bastion closes its resources in reverse.
A resource that fails to open stops the startup with a message that says which and why; the
server prints it and exits non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from bastion.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LifespanMiddleware"]

logger = logging.getLogger("bastion.lifespan")

_RETURNED: Message = {"type": "bastion.app.returned"}


class _AppLifespan:
    """The app's half of the lifespan protocol, run as a child task over memory streams."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self.received = False
        self.exited = False
        send_in, self._receive_in = anyio.create_memory_object_stream[Message](2)
        self._send_in: ObjectSendStream[Message] = send_in
        self._send_out, self._receive_out = anyio.create_memory_object_stream[Message](4)
        self._out: ObjectReceiveStream[Message] = self._receive_out

    async def run(self) -> None:
        async def receive() -> Message:
            self.received = True
            return await self._receive_in.receive()

        async def send(message: Message) -> None:
            await self._send_out.send(message)

        try:
            await self.app(self.scope, receive, send)
        except Exception as exc:  # reported to the server as a failed startup or shutdown
            await self._send_out.send({"type": "bastion.app.raised", "exc": exc})
        else:
            await self._send_out.send(_RETURNED)
        finally:
            self.exited = True

    async def step(self, message: Message) -> Message:
        """Hand the app ``message`` and return its answer (or what its task ended with)."""
        if not self.exited:
            await self._send_in.send(message)
        return await self._out.receive() if not self.exited else _RETURNED

    async def aclose(self) -> None:
        for stream in (self._send_in, self._receive_in, self._send_out, self._receive_out):
            await stream.aclose()


def _failure_text(answer: Message, *, received: bool) -> str | None:
    """The failure an app's answer reports, or ``None`` when it succeeded.

    An app that returns or raises without ever reading a lifespan message does not support the
    protocol (uvicorn's "auto" mode treats that as fine), and so does one that simply returns.
    """
    kind = answer["type"]
    if not received or kind == _RETURNED["type"]:
        return None
    if kind.endswith(".failed"):
        return str(answer.get("message", "")) or "the application reported a failure"
    if kind == "bastion.app.raised":
        exc: BaseException = answer["exc"]
        return f"{type(exc).__name__}: {exc}"
    return None


class LifespanMiddleware:
    """Opens resources before the app starts and closes them after it stops.

    Args:
        app: the ASGI app to wrap.
        startup: awaited on ``lifespan.startup`` before the app's own startup; gets the scope so
            it can publish state. Raising fails the startup with the exception's message.
        shutdown: awaited on ``lifespan.shutdown`` after the app's own shutdown.
    """

    __slots__ = ("app", "shutdown", "startup")

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        startup: Callable[[Scope], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle ``lifespan`` scopes; pass everything else straight through."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.startup(scope)
        except Exception as exc:  # every startup failure is reported, never a traceback dump
            logger.error("bastion startup failed: %s", exc)
            await self._close_quietly()
            await send({"type": "lifespan.startup.failed", "message": f"bastion: {exc}"})
            return

        child = _AppLifespan(self.app, scope)
        app_failure: str | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(child.run)
            answer = await child.step({"type": "lifespan.startup"})
            startup_failure = _failure_text(answer, received=child.received)
            if startup_failure is None:
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                answer = await child.step({"type": "lifespan.shutdown"})
                app_failure = _failure_text(answer, received=child.received)
            # The app has answered; whatever it still does after that is not waited for.
            group.cancel_scope.cancel()
        await child.aclose()
        if startup_failure is not None:
            await self._close_quietly()
            await send({"type": "lifespan.startup.failed", "message": startup_failure})
            return

        own_failure = None
        try:
            await self.shutdown()
        except Exception as exc:  # reported to the server below
            own_failure = f"bastion: {exc}"
            logger.error("bastion shutdown failed: %s", exc)
        failures = [text for text in (app_failure, own_failure) if text]
        if failures:
            await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
        else:
            await send({"type": "lifespan.shutdown.complete"})

    async def _close_quietly(self) -> None:
        try:
            await self.shutdown()
        except Exception:  # already failing; the startup error is the one worth reporting
            logger.debug("closing after a failed startup also failed", exc_info=True)
