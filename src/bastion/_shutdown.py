"""Graceful shutdown: stop being ready first, then drain, then close.

The order a load balancer needs (DESIGN §4 layer 1):

1. **SIGTERM arrives.** Readiness turns 503 at once (``on_drain`` callbacks), while the server
   keeps accepting and serving, for ``pre_stop_delay_s``, so load balancers notice the instance
   is going away before connections are refused.
2. **Then the server's own shutdown runs** (the SIGTERM handler that was installed before ours:
   uvicorn's, gunicorn's worker). It stops accepting connections and lets in-flight requests
   finish. Requests that still arrive on kept-alive connections get 503 with
   ``Connection: close`` so that clients retry elsewhere.
3. **Lifespan shutdown**: bastion waits for the requests still in flight, up to
   ``drain_timeout_s``, and only then closes its resources in reverse order.

The signal hook is installed only in the main thread, during lifespan startup (when the server
has installed its own handler), and only for SIGTERM: Ctrl+C during development stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import anyio

from bastion._clock import SYSTEM_CLOCK, Clock

__all__ = ["ShutdownCoordinator"]

logger = logging.getLogger("bastion.shutdown")


class ShutdownCoordinator:
    """Counts in-flight requests and runs the drain sequence.

    Args:
        pre_stop_delay_s: after SIGTERM, how long to keep serving (not ready) before the
            server's own shutdown starts.
        drain_timeout_s: at lifespan shutdown, how long to wait for in-flight requests.
        clock: time source, for components that schedule around the shutdown.
    """

    __slots__ = (
        "_background",
        "_drain_callbacks",
        "_previous",
        "_tasks",
        "clock",
        "drain_timeout_s",
        "draining",
        "idle",
        "in_flight",
        "pre_stop_delay_s",
        "refusing",
    )

    def __init__(
        self, *, pre_stop_delay_s: float, drain_timeout_s: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.pre_stop_delay_s = pre_stop_delay_s
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.in_flight = 0
        self.draining = False
        """Shutdown has begun: readiness reports 503."""
        self.refusing = False
        """The pre-stop delay is over: new requests get 503 with ``Connection: close``."""
        self.idle: anyio.Event | None = None
        """Set by the pipeline when the last in-flight request ends during ``drain()``."""
        self._drain_callbacks: list[Callable[[], None]] = []
        self._previous: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def background(self) -> int:
        """Background tasks started with ``spawn`` and not finished yet."""
        return len(self._background)

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None] | None:
        """Run ``work`` in the background on the running loop, as part of what ``drain`` waits
        for (a response cache refreshing an entry after serving it stale, say).

        Returns the task, or ``None`` without starting it once new requests are refused: work
        that a request would have caused is not started during a shutdown.
        """
        if self.refusing:
            work.close()  # never awaited: close it so Python does not warn
            return None
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously) the moment draining begins, e.g. to fail readiness."""
        self._drain_callbacks.append(callback)

    def begin_draining(self) -> None:
        """Turn not-ready now (idempotent)."""
        if self.draining:
            return
        self.draining = True
        logger.info("draining: readiness now reports 503 (%d requests in flight)", self.in_flight)
        for callback in self._drain_callbacks:
            try:
                callback()
            except Exception:  # one broken callback must not stop the shutdown
                logger.exception("drain callback %r failed", callback)

    def install_signal_hook(self) -> bool:
        """Put bastion's SIGTERM handling in front of the server's; return whether it could.

        Must run on the event loop, in the main thread (lifespan startup does both).
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False  # no server handler to hand over to: leave SIGTERM alone
        loop = asyncio.get_running_loop()
        self._previous = previous

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: do not wait again
                previous(signum, frame)
                return

            def start() -> None:
                task = loop.create_task(self._pre_stop(previous, signum, frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

            self.begin_draining()
            loop.call_soon_threadsafe(start)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    def uninstall_signal_hook(self) -> None:
        """Give SIGTERM back to the handler that was there before (if ours is still installed)."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if getattr(current, "__qualname__", "").endswith("on_sigterm"):
                signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    async def _pre_stop(self, previous: Any, signum: int, frame: FrameType | None) -> None:
        if self.pre_stop_delay_s > 0:
            await anyio.sleep(self.pre_stop_delay_s)
        self.refusing = True
        previous(signum, frame)

    async def drain(self) -> int:
        """Stop taking requests and wait for those in flight, up to ``drain_timeout_s``.

        Returns:
            How many requests were still in flight when the deadline passed (0 when all finished).
        """
        self.begin_draining()
        self.refusing = True
        with anyio.move_on_after(self.drain_timeout_s):
            if self.in_flight:
                self.idle = anyio.Event()
                await self.idle.wait()
            # Then the background work those requests started, within the same deadline.
            while self._background:
                await asyncio.wait(set(self._background))
        if self.in_flight or self._background:
            logger.warning(
                "drain deadline of %.1fs passed with %d requests in flight and %d background "
                "tasks running",
                self.drain_timeout_s,
                self.in_flight,
                len(self._background),
            )
        return self.in_flight
