"""Bastion's own layers fused into one ASGI call.

DESIGN §4 layers 1-3 (lifespan, request context, error boundary) and the ops endpoints each exist
as a standalone middleware, for users who want one of them alone. ``Bastion`` installs this
class instead: it runs the same code (``LifespanMiddleware``, ``ContextBuilder``,
``answer_unhandled``, ``OpsRoutes.serve``) in one layer, so a request pays for one coroutine
frame and one ``send`` wrapper instead of four and two. Measured in
``benchmarks/results/breakdown-*.md``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bastion._asgi import scope_path
from bastion._lifespan import LifespanMiddleware
from bastion._ops import OpsRoutes
from bastion._shutdown import ShutdownCoordinator
from bastion.context import SCOPE_KEY, ContextBuilder, RequestObserver, _current
from bastion.events import Hooks
from bastion.problem import UnhandledResponder, answer_unhandled, send_problem
from bastion.types import ASGIApp, Receive, Scope, Send

__all__ = ["PipelineMiddleware"]

_GOING_AWAY = [(b"connection", b"close"), (b"retry-after", b"1")]


class PipelineMiddleware:
    """Lifespan, request context, error boundary and ops endpoints in one layer.

    Args:
        app: the ASGI app to wrap.
        startup: opens bastion's resources before the app's own startup (see
            ``LifespanMiddleware``).
        shutdown: closes them after the app's own shutdown.
        context: builds each request's context and echoes its id.
        hooks: where ``UnhandledError`` events are published.
        ops_prefix: where the ops endpoints live, or ``None`` when they are disabled.
        ops_routes: the ops endpoints.
        responder: answers unhandled errors the app's own way when it has a 500 handler.
        coordinator: counts in-flight requests and says when to refuse new ones (draining).
        observer: telemetry called around every HTTP request except the ops endpoints' (probes
            and scrapes would drown the access log and skew the latency of the app's routes).
    """

    __slots__ = (
        "_ops_prefix",
        "_ops_routes",
        "_slash_prefix",
        "app",
        "context",
        "coordinator",
        "hooks",
        "lifespan",
        "observer",
        "responder",
    )

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        startup: Callable[[Scope], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        context: ContextBuilder,
        hooks: Hooks | None,
        ops_prefix: str | None,
        ops_routes: OpsRoutes,
        responder: UnhandledResponder | None = None,
        coordinator: ShutdownCoordinator | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.app = app
        self.lifespan = LifespanMiddleware(app, startup=startup, shutdown=shutdown)
        self.context = context
        self.hooks = hooks
        self._ops_prefix = ops_prefix
        self._slash_prefix = f"{ops_prefix}/" if ops_prefix is not None else ""
        self._ops_routes = ops_routes
        self.responder = responder
        self.observer = observer
        self.coordinator = (
            coordinator
            if coordinator is not None
            else ShutdownCoordinator(pre_stop_delay_s=0.0, drain_timeout_s=30.0)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one scope through every bastion layer at once."""
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                await self.lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        context = self.context.build(scope)
        scope[SCOPE_KEY] = context
        token = _current.set(context)
        if scope_type == "websocket":
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # the boundary: every error the app did not handle ends here
                await answer_unhandled(scope, send, exc, started=False, hooks=self.hooks)
            finally:
                _current.reset(token)
            return

        send_with_id = self.context.echo(context, send)
        prefix = self._ops_prefix
        if prefix is not None:
            path = context.path if not scope.get("root_path") else scope_path(scope)
            if path == prefix or path.startswith(self._slash_prefix):
                # Ops endpoints answer even while draining: that is how readiness reports it.
                try:
                    await self._ops_routes.serve(scope, receive, send_with_id, path[len(prefix) :])
                except Exception as exc:  # the boundary covers the ops endpoints too
                    await self._unhandled(scope, receive, send_with_id, exc, context.status)
                finally:
                    _current.reset(token)
                return

        coordinator = self.coordinator
        coordinator.in_flight += 1
        observer = self.observer
        state = None
        error: BaseException | None = None
        try:
            if observer is not None:
                state = observer.request_started(context, scope)
            if coordinator.refusing:
                await send_problem(
                    scope,
                    send_with_id,
                    503,
                    detail="The server is shutting down; retry on another instance.",
                    headers=_GOING_AWAY,
                )
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:  # the boundary: every error the app did not handle ends here
            error = exc
            await self._unhandled(scope, receive, send_with_id, exc, context.status)
        except BaseException as exc:  # cancelled: observed, then passed on
            error = exc
            raise
        finally:
            try:
                if observer is not None:
                    observer.request_finished(context, scope, state, error)
            finally:
                # Whatever the observer did: a request counted in flight forever would hold up
                # every graceful shutdown until its drain deadline.
                _current.reset(token)
                coordinator.in_flight -= 1
                if coordinator.idle is not None and not coordinator.in_flight:
                    coordinator.idle.set()

    async def _unhandled(
        self, scope: Scope, receive: Receive, send: Send, exc: Exception, status: int | None
    ) -> None:
        await answer_unhandled(
            scope,
            send,
            exc,
            started=status is not None,
            hooks=self.hooks,
            receive=receive,
            responder=self.responder,
        )
