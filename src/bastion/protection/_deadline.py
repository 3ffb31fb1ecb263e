"""Deadlines: a request that runs past its timeout is cancelled (DESIGN §4, layer 7).

``DeadlineMiddleware`` gives each request a deadline, ``RequestContext.started`` plus the
timeout of its route: the ``timeout()`` declared on the route (FastAPI), else the first matching
rule, else the default. The app runs inside an anyio cancel scope with that deadline, so the
handler is really cancelled (its ``finally`` blocks run, its outbound calls are interrupted).

- Cancelled before the response started: ``504`` problem+json.
- Cancelled after it started: the status already sent cannot change, so the response is cut
  off; the server closes the connection and the client sees an incomplete response rather than
  a silently shortened one.

``RequestContext.deadline`` holds the deadline (monotonic seconds, on bastion's clock) so
outbound calls and jobs can honour it; ``time_left()`` reads it for the current request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._routes import RouteTable
from bastion.context import SCOPE_KEY, RequestContext, current_context
from bastion.events import Hooks, RequestTimedOut
from bastion.exceptions import ConfigurationError
from bastion.problem import send_problem
from bastion.protection._priority import route_target, rule_from_value
from bastion.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bastion.settings import DeadlineSettings

__all__ = [
    "DEADLINE_SCOPE_KEY",
    "DeadlineMiddleware",
    "DeadlineRule",
    "RequestDeadline",
    "deadline_layer",
    "declare_route_timeout",
    "seconds",
    "time_left",
]

logger = logging.getLogger("bastion.protection")

DEADLINE_SCOPE_KEY = "bastion.deadline"
"""Key of the request's ``RequestDeadline`` in the ASGI scope (where ``timeout()`` finds it)."""


class _Declarations:
    """Whether any route declared a ``timeout()`` in this process (see ``deadline_layer``)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


_declared = _Declarations()


def declare_route_timeout() -> None:
    """Record that a route declares its own timeout, so ``deadline_layer`` installs the layer."""
    _declared.count += 1


def seconds(value: float | timedelta, what: str = "timeout") -> float:
    """``value`` in seconds, checked positive and finite.

    Raises:
        ConfigurationError: when it is not.
    """
    number = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ConfigurationError(f"a {what} must be a number of seconds, got {value!r}")
    if not (number > 0 and math.isfinite(number)):
        raise ConfigurationError(f"a {what} must be positive and finite, got {value!r}")
    return float(number)


def time_left(*, clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Seconds left before the current request's deadline (0 once past), or ``None``.

    ``None`` outside a request or when the request has no deadline. Pass the clock ``Bastion``
    was given when it is not the system clock (tests).

    Example::

        async with httpx.AsyncClient(timeout=time_left() or 10.0) as client: ...
    """
    try:
        context = current_context()
    except LookupError:
        return None
    deadline = context.deadline
    if deadline is None:
        return None
    return max(0.0, deadline - clock.monotonic())


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineRule:
    """A timeout for the requests whose route template (or path) matches a pattern.

    Example::

        DeadlineRule(path="/reports/*", timeout_s=30)
        DeadlineRule.from_value("GET /search=2.5")    # the settings shorthand
    """

    path: str
    """``[METHODS ]PATTERN``, e.g. ``/reports/*`` or ``GET /items/{id}``."""
    timeout_s: float
    """Seconds from the request's arrival to its deadline."""

    @classmethod
    def from_value(cls, value: DeadlineRule | str | Mapping[str, Any]) -> DeadlineRule:
        """A rule from a ``DeadlineRule``, ``"PATTERN=SECONDS"`` or a mapping of its fields.

        Raises:
            ConfigurationError: when the value is none of those or a field is invalid.
        """
        rule = rule_from_value(
            cls, value, "timeout_s", float, "'PATTERN=SECONDS' such as '/reports/*=30'"
        )
        seconds(rule.timeout_s, f"timeout of rule {rule.path!r}")
        return rule


class RequestDeadline:
    """One request's deadline; ``timeout()`` dependencies move it.

    Attributes:
        started: monotonic time the request arrived (``RequestContext.started``).
        timeout_s: the timeout that applies, or ``None`` (no deadline).
    """

    __slots__ = ("_clock", "_context", "cancel_scope", "started", "timeout_s")

    def __init__(
        self,
        started: float,
        timeout_s: float | None,
        context: RequestContext | None,
        clock: Clock,
    ) -> None:
        self.started = started
        self._clock = clock
        self._context = context
        self.cancel_scope: anyio.CancelScope | None = None
        self.timeout_s: float | None = None
        self.set_timeout(timeout_s)

    @property
    def deadline(self) -> float | None:
        """Monotonic time (on bastion's clock) the response is due, or ``None``."""
        return None if self.timeout_s is None else self.started + self.timeout_s

    def remaining(self) -> float:
        """Seconds left (negative once past; infinite without a deadline)."""
        deadline = self.deadline
        return math.inf if deadline is None else deadline - self._clock.monotonic()

    def set_timeout(self, timeout_s: float | None) -> None:
        """Replace the timeout, counted from the request's arrival; re-arms the cancel scope."""
        self.timeout_s = timeout_s
        if self._context is not None:
            self._context.deadline = self.deadline
        if self.cancel_scope is not None:
            self.cancel_scope.deadline = self.loop_deadline()

    def loop_deadline(self) -> float:
        """The deadline on the event loop's clock, which anyio's cancel scopes use."""
        remaining = self.remaining()
        return math.inf if remaining == math.inf else anyio.current_time() + remaining


class _Progress:
    """Watches a response go out: whether it started, whether it completed.

    Once it completed, the deadline is lifted: the client has its answer, and what the app
    still runs (Starlette's background tasks run after the response) is not cut short.
    """

    __slots__ = ("cancel_scope", "complete", "send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.complete = False
        self.cancel_scope: anyio.CancelScope | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            await self.send(message)
            self.complete = True
            if self.cancel_scope is not None and not self.cancel_scope.cancel_called:
                self.cancel_scope.deadline = math.inf
            return
        await self.send(message)


class DeadlineMiddleware:
    """Cancels requests that run past their timeout: 504, or a cut-off response.

    Example::

        app.add_middleware(
            DeadlineMiddleware, timeout_s=10, rules=["/reports/*=60"], exclude=["/events*"]
        )

        @app.get("/search", dependencies=[timeout(2)])     # bastion.protection.timeout
        async def search(q: str): ...

    Args:
        app: the ASGI app to wrap.
        timeout_s: the default timeout, or ``None`` for none.
        rules: timeouts by pattern (``DeadlineRule``, ``"PATTERN=SECONDS"`` or mappings); the
            first match replaces the default.
        exclude: patterns of requests without a timeout from the settings (a route's own
            ``timeout()`` still applies).
        hooks: where ``RequestTimedOut`` events are published.
        clock: bastion's clock; ``RequestContext.deadline`` is on it.
        route_timeouts: honour ``timeout()`` declared on routes. When false, requests that no
            setting gives a timeout skip the cancel scope and its cost.

    Raises:
        ConfigurationError: for a non-positive timeout or an invalid rule or pattern.
    """

    __slots__ = ("_clock", "_hooks", "_route_timeouts", "_table", "app")

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        timeout_s: float | timedelta | None = None,
        rules: Iterable[DeadlineRule | str | Mapping[str, Any]] = (),
        exclude: Iterable[str] = (),
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
        route_timeouts: bool = True,
    ) -> None:
        self.app = app
        self._route_timeouts = route_timeouts
        default = None if timeout_s is None else seconds(timeout_s)
        table: list[tuple[str, float | None]] = [(pattern, None) for pattern in exclude]
        table += [(rule.path, rule.timeout_s) for rule in map(DeadlineRule.from_value, rules)]
        self._table: RouteTable[float | None] = RouteTable(table, default)
        self._hooks = hooks
        self._clock = clock

    @staticmethod
    def options_from_settings(
        settings: DeadlineSettings, *, hooks: Hooks | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> dict[str, Any]:
        """Keyword arguments for this middleware (or ``deadline_layer``) from settings.

        Raises:
            ConfigurationError: naming the ``BASTION_DEADLINE__*`` variable that is invalid.
        """
        try:
            DeadlineMiddleware(_no_app, rules=settings.rules)
        except ConfigurationError as exc:
            raise ConfigurationError(f"BASTION_DEADLINE__RULES: {exc}") from None
        try:
            DeadlineMiddleware(_no_app, exclude=settings.exclude)
        except ConfigurationError as exc:
            raise ConfigurationError(f"BASTION_DEADLINE__EXCLUDE: {exc}") from None
        return {
            "timeout_s": settings.default_s,
            "rules": settings.rules,
            "exclude": settings.exclude,
            "hooks": hooks,
            "clock": clock,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app inside a cancel scope set to the request's deadline."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context: RequestContext | None = scope.get(SCOPE_KEY)
        clock = self._clock
        timeout = self._table.lookup(*route_target(scope, context))
        if timeout is None and not self._route_timeouts:
            await self.app(scope, receive, send)
            return
        started = context.started if context is not None else clock.monotonic()
        handle = RequestDeadline(started, timeout, context, clock)
        scope[DEADLINE_SCOPE_KEY] = handle
        progress = _Progress(send)
        if handle.remaining() <= 0:
            # The budget went while the request queued for admission: do not start the work.
            await self._timed_out(scope, send, context, handle, progress)
            return
        with anyio.CancelScope(deadline=handle.loop_deadline()) as cancel_scope:
            handle.cancel_scope = progress.cancel_scope = cancel_scope
            await self.app(scope, receive, progress)
        handle.cancel_scope = None
        if cancel_scope.cancel_called and not progress.complete:
            await self._timed_out(scope, send, context, handle, progress)

    async def _timed_out(
        self,
        scope: Scope,
        send: Send,
        context: RequestContext | None,
        handle: RequestDeadline,
        progress: _Progress,
    ) -> None:
        timeout = handle.timeout_s if handle.timeout_s is not None else 0.0
        method = scope.get("method", "GET")
        route = context.route if context is not None else None
        if self._hooks is not None:
            self._hooks.publish(
                RequestTimedOut(
                    method=method,
                    route=route,
                    timeout_s=timeout,
                    response_started=progress.started,
                )
            )
        if progress.started:
            # The status is on the wire: finishing the body would pass a truncated response off
            # as complete. Returning without it makes the server close the connection.
            logger.warning(
                "%s %s ran past its %g s deadline after its response started; "
                "the response was cut off",
                method,
                route or scope.get("path", "?"),
                timeout,
                extra={"request_id": context.request_id if context is not None else None},
            )
            return
        await send_problem(
            scope,
            send,
            504,
            detail=f"The request did not complete within its {timeout:g} s deadline.",
            extensions={"timeout_s": timeout},
        )


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands in for the app when options are only being validated."""


def deadline_layer(
    app: ASGIApp,
    /,
    *,
    routes_declared: Callable[[], bool] | None = None,
    **options: Any,
) -> ASGIApp:
    """``DeadlineMiddleware`` around ``app`` when anything can give a request a timeout, else
    ``app`` itself: a cancel scope costs every request several microseconds.

    Starlette builds its middleware stack when the app first runs, after the routes (and their
    ``timeout()`` dependencies) were declared, so ``app.add_middleware(deadline_layer, ...)``
    decides with every declaration known. ``options`` are ``DeadlineMiddleware``'s;
    ``routes_declared`` replaces the check for ``timeout()`` declarations (tests).
    """
    declared = routes_declared() if routes_declared is not None else _declared.count > 0
    configured = options.get("timeout_s") is not None or bool(list(options.get("rules", ())))
    if not configured and not declared:
        return app
    return DeadlineMiddleware(app, **options, route_timeouts=declared)
