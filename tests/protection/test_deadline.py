"""Deadlines: cancelled handlers, 504 problems, cut-off responses, the deadline in the context."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from bastion import Bastion, Settings
from bastion._clock import ManualClock
from bastion.context import RequestContextMiddleware, current_context
from bastion.events import RequestTimedOut
from bastion.exceptions import ConfigurationError
from bastion.protection import (
    DEADLINE_SCOPE_KEY,
    DeadlineMiddleware,
    DeadlineRule,
    deadline_layer,
    time_left,
    timeout,
)
from bastion.settings import load_settings
from bastion.types import ASGIApp, Message, Receive, Scope, Send
from tests.asgi import call, client_for, http_scope
from tests.protection.test_shedding import recorder

pytestmark = pytest.mark.anyio

SHORT = 0.05
"""A timeout the tests let expire for real: handlers wait forever, so only the deadline ends
them, and no assertion depends on how long that took."""


class Forever:
    """A raw ASGI app that never finishes by itself; records that its ``finally`` ran."""

    def __init__(self, *, start: bool = False) -> None:
        self.start = start
        self.finalized = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.start:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            await anyio.sleep_forever()
        finally:
            self.finalized = True


def with_context(app: ASGIApp, clock: ManualClock | None = None) -> ASGIApp:
    """``app`` behind bastion's request context (on ``clock`` when given)."""
    if clock is None:
        return RequestContextMiddleware(app)
    return RequestContextMiddleware(app, clock=clock)


async def test_a_handler_past_its_deadline_is_cancelled_and_answered_504() -> None:
    """The handler is really cancelled (its finally ran) and the client gets a 504 problem."""
    handler = Forever()
    hooks, events = recorder(RequestTimedOut)
    app = with_context(DeadlineMiddleware(handler, timeout_s=SHORT, hooks=hooks))

    response = await call(app, http_scope("/slow"))

    assert True is handler.finalized
    assert 504 == response.status
    assert "application/problem+json" == response.headers["content-type"]
    problem = response.json()
    assert (504, SHORT) == (problem["status"], problem["timeout_s"])
    assert response.headers["x-request-id"] == problem["request_id"]
    assert [(SHORT, False)] == [(event.timeout_s, event.response_started) for event in events]


async def test_a_started_response_is_cut_off_not_changed() -> None:
    """After the status went out, the deadline stops the body without completing it."""
    handler = Forever(start=True)
    hooks, events = recorder(RequestTimedOut)
    app = with_context(DeadlineMiddleware(handler, timeout_s=SHORT, hooks=hooks))

    response = await call(app, http_scope("/stream"))

    assert True is handler.finalized
    assert 200 == response.status
    assert b"partial" == response.body
    last = response.messages[-1]
    assert (last["type"], last.get("more_body")) == ("http.response.body", True)
    assert [True] == [event.response_started for event in events]


async def test_a_response_that_completes_in_time_is_untouched() -> None:
    """Within the deadline nothing changes, and no event is published."""
    hooks, events = recorder(RequestTimedOut)

    async def quick(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    response = await call(DeadlineMiddleware(quick, timeout_s=10, hooks=hooks), http_scope("/"))

    assert (201, b"done") == (response.status, response.body)
    assert [] == events


async def test_work_after_a_complete_response_is_not_cut_short() -> None:
    """Once the response is complete the deadline is lifted: background work runs to its end."""
    finished = False

    async def answer_then_work(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal finished
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await anyio.sleep(SHORT * 4)  # what Starlette's background tasks do after the response
        finished = True

    response = await call(DeadlineMiddleware(answer_then_work, timeout_s=SHORT), http_scope("/"))

    assert (200, True) == (response.status, finished)


async def test_the_deadline_is_in_the_context_on_the_injected_clock() -> None:
    """RequestContext.deadline is arrival + timeout; time_left() counts down on the clock."""
    clock = ManualClock()
    seen: list[Any] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current_context().deadline)
        seen.append(time_left(clock=clock))
        clock.advance(2)
        seen.append(time_left(clock=clock))
        clock.advance(10)
        seen.append(time_left(clock=clock))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = with_context(DeadlineMiddleware(handler, timeout_s=5, clock=clock), clock)
    await call(app, http_scope("/"))

    assert [1005.0, 5.0, 3.0, 0.0] == seen  # ManualClock starts at 1000


async def test_time_left_is_none_without_a_deadline() -> None:
    """Outside a request, or in one without a deadline, there is no time limit."""
    seen: list[float | None] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(time_left())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await call(with_context(handler), http_scope("/"))

    assert [None, None] == [*seen, time_left()]


async def test_a_budget_spent_before_the_layer_is_answered_at_once() -> None:
    """A request that used its whole timeout queueing is answered 504 without running."""
    clock = ManualClock()
    handler = Forever()
    ran = False

    async def queue(scope: Scope, receive: Receive, send: Send) -> None:
        clock.advance(6)  # as if the request had waited this long for a permit
        await deadline(scope, receive, send)

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal ran
        ran = True
        await handler(scope, receive, send)

    deadline = DeadlineMiddleware(spy, timeout_s=5, clock=clock)
    response = await call(with_context(queue, clock), http_scope("/"))

    assert (504, False) == (response.status, ran)


async def test_rules_and_exclusions_choose_the_timeout_by_route() -> None:
    """The first matching rule replaces the default; excluded patterns get no timeout."""
    middleware = DeadlineMiddleware(
        Forever(), timeout_s=30, rules=["/reports/*=2", {"path": "GET /search", "timeout_s": 1}],
        exclude=["/events*"],
    )  # fmt: skip
    timeouts: dict[str, float | None] = {}

    async def capture(scope: Scope, receive: Receive, send: Send) -> None:
        timeouts[scope["path"]] = scope[DEADLINE_SCOPE_KEY].timeout_s
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware.app = capture
    for path in ("/reports/7", "/search", "/albums", "/events/live"):
        await call(middleware, http_scope(path))

    assert {"/reports/7": 2, "/search": 1, "/albums": 30, "/events/live": None} == timeouts


async def test_without_a_timeout_the_request_runs_without_a_cancel_scope() -> None:
    """No timeout from settings and no route declarations: the request passes straight through."""
    seen: list[object] = []

    async def capture(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope.get(DEADLINE_SCOPE_KEY))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await call(DeadlineMiddleware(capture, route_timeouts=False), http_scope("/"))

    assert [None] == seen


def test_the_layer_is_left_out_when_nothing_can_time_out() -> None:
    """deadline_layer returns the app itself unless a timeout is configured or declared."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    assert app is deadline_layer(app, routes_declared=lambda: False)
    assert isinstance(
        deadline_layer(app, timeout_s=1, routes_declared=lambda: False), DeadlineMiddleware
    )
    assert isinstance(deadline_layer(app, routes_declared=lambda: True), DeadlineMiddleware)
    assert isinstance(deadline_layer(app, rules=["/a=1"]), DeadlineMiddleware)


async def test_websockets_pass_untouched() -> None:
    """Only HTTP requests get deadlines (a WebSocket lives as long as it needs)."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await DeadlineMiddleware(app, timeout_s=SHORT)({"type": "websocket"}, _receive, _send)

    assert ["websocket"] == seen


async def _receive() -> Message:
    return {"type": "websocket.connect"}


async def _send(message: Message) -> None:
    pass


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/reports/*=30", DeadlineRule(path="/reports/*", timeout_s=30)),
        ("GET /search=2.5", DeadlineRule(path="GET /search", timeout_s=2.5)),
        ({"path": "/a", "timeout_s": 1}, DeadlineRule(path="/a", timeout_s=1)),
    ],
)
def test_deadline_rules_parse_the_shorthand_and_mappings(
    value: str | dict[str, Any], expected: DeadlineRule
) -> None:
    """``PATTERN=SECONDS`` and mappings of the fields both build rules."""
    assert expected == DeadlineRule.from_value(value)


@pytest.mark.parametrize(
    "value", ["/reports/*", "/a=soon", "=3", "/a=0", "/a=-1", "/a=inf", {"path": "/a"}]
)
def test_invalid_deadline_rules_are_configuration_errors(value: str | dict[str, Any]) -> None:
    """A rule without a pattern or a positive, finite number of seconds fails at startup."""
    with pytest.raises(ConfigurationError):
        DeadlineRule.from_value(value)


def test_a_timeout_must_be_positive() -> None:
    """Zero, negative and infinite timeouts are refused, from code as from settings."""
    with pytest.raises(ConfigurationError):
        DeadlineMiddleware(Forever(), timeout_s=0)
    with pytest.raises(ConfigurationError):
        timeout(float("inf"))


# -- FastAPI and Bastion ------------------------------------------------------------------------


def bastion_app(**settings: Any) -> tuple[FastAPI, Bastion, list[str]]:
    """A FastAPI app under Bastion with slow routes; the list records handlers' finally blocks."""
    app = FastAPI()
    bastion = Bastion(app, Settings(_env_file=None, logging={"configure": False}, **settings))
    finalized: list[str] = []

    @app.get("/slow")
    async def slow(seconds: float = 3600) -> dict[str, bool]:
        """Sleeps, then answers."""
        try:
            await anyio.sleep(seconds)
        finally:
            finalized.append("/slow")
        return {"done": True}

    @app.get("/short", dependencies=[bastion.timeout(SHORT)])
    async def short() -> None:
        """Declares a timeout shorter than the default."""
        try:
            await anyio.sleep_forever()
        finally:
            finalized.append("/short")

    @app.get("/long", dependencies=[bastion.timeout(60)])
    async def long(seconds: float = 0.6) -> dict[str, float | None]:
        """Declares a timeout longer than the default, and reports its deadline."""
        await anyio.sleep(seconds)
        return {"time_left": time_left()}

    return app, bastion, finalized


async def request(app: FastAPI, path: str) -> httpx.Response:
    """One request to ``app`` with its lifespan running."""
    async with client_for(app) as client:
        return await client.get(path)


async def test_the_default_timeout_from_settings_cancels_slow_routes() -> None:
    """BASTION_DEADLINE__DEFAULT_S: a FastAPI handler past it is cancelled, the client gets 504."""
    app, _, finalized = bastion_app(deadline={"default_s": SHORT})

    response = await request(app, "/slow")

    assert 504 == response.status_code
    assert ["/slow"] == finalized
    assert response.headers["x-request-id"] == response.json()["request_id"]


async def test_a_route_timeout_shorter_than_the_default_applies() -> None:
    """bastion.timeout(...) on a route replaces the (longer) default."""
    app, _, finalized = bastion_app(deadline={"default_s": 60})

    response = await request(app, "/short")

    assert (504, ["/short"]) == (response.status_code, finalized)


async def test_a_route_timeout_longer_than_the_default_applies() -> None:
    """bastion.timeout(60) lets a route run past the default, with its deadline in the context."""
    app, _, _ = bastion_app(deadline={"default_s": 0.3})

    response = await request(app, "/long?seconds=0.6")

    assert 200 == response.status_code
    assert 50 < response.json()["time_left"] < 60


async def test_a_route_timeout_works_without_any_setting() -> None:
    """With no default and no rule, a declared route timeout still installs the layer."""
    app, _, finalized = bastion_app()

    assert (504, ["/short"]) == ((await request(app, "/short")).status_code, finalized)


async def test_a_sync_handler_runs_to_its_end_then_gets_504() -> None:
    """A ``def`` handler's thread cannot be interrupted: it finishes, then the 504 is sent."""
    app, _, finalized = bastion_app(deadline={"default_s": SHORT})

    @app.get("/blocking")
    def blocking() -> dict[str, bool]:
        """Blocks its worker thread past the deadline."""
        time.sleep(SHORT * 4)
        finalized.append("/blocking")
        return {"done": True}

    response = await request(app, "/blocking")

    assert (504, ["/blocking"]) == (response.status_code, finalized)


async def test_a_rule_from_settings_times_out_its_routes() -> None:
    """BASTION_DEADLINE__RULES matches route templates."""
    app, _, _ = bastion_app(deadline={"rules": [f"GET /slow={SHORT}"]})

    assert 504 == (await request(app, "/slow")).status_code


async def test_timed_out_requests_are_counted_in_the_metrics() -> None:
    """RequestTimedOut feeds bastion_events_total{event="request_timed_out"}."""
    app, bastion, _ = bastion_app(deadline={"default_s": SHORT})

    await request(app, "/slow")

    assert 'bastion_events_total{event="request_timed_out"} 1' in bastion.metrics.render().decode()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BASTION_DEADLINE__DEFAULT_S", "0"),
        ("BASTION_DEADLINE__RULES", "not json"),
    ],
)
def test_invalid_deadline_settings_name_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad default or rules list fails at startup, naming the environment variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_an_invalid_rule_fails_bastion_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that parses as JSON but not as a rule names BASTION_DEADLINE__RULES."""
    monkeypatch.setenv("BASTION_DEADLINE__RULES", '["/reports/*"]')
    with pytest.raises(ConfigurationError, match="BASTION_DEADLINE__RULES"):
        Bastion(FastAPI(), load_settings())
