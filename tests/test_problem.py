"""RFC 9457 problem details and the error boundary."""

from __future__ import annotations

import logging

import orjson
import pytest

from bastion.context import RequestContextMiddleware
from bastion.events import Hooks, UnhandledError
from bastion.problem import ErrorBoundaryMiddleware, problem_body, send_problem
from bastion.testing import capture_events
from bastion.types import Message, Receive, Scope, Send
from tests.asgi import call, http_scope

pytestmark = pytest.mark.anyio


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose handler raises before responding."""
    raise RuntimeError("secret database password is hunter2")


def test_problem_body_has_the_rfc_members() -> None:
    """type, title and status are always present; detail and extensions when given."""
    body = orjson.loads(problem_body(404, detail="No album 7.", extensions={"request_id": "r1"}))
    expected = {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "No album 7.",
        "request_id": "r1",
    }
    assert expected == body


def test_unknown_status_gets_a_generic_title() -> None:
    """A status without a standard phrase still yields a valid problem."""
    assert "Error" == orjson.loads(problem_body(499))["title"]


async def test_send_problem_sets_content_type_length_and_no_store() -> None:
    """A problem response is complete, typed, sized and never cached."""
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    await send_problem(http_scope(), send, 503, headers=[(b"retry-after", b"2")])
    headers = dict(messages[0]["headers"])
    assert b"application/problem+json" == headers[b"content-type"]
    assert str(len(messages[1]["body"])).encode() == headers[b"content-length"]
    assert b"no-store" == headers[b"cache-control"]
    assert b"2" == headers[b"retry-after"]


async def test_unhandled_exception_becomes_a_problem_500(caplog: pytest.LogCaptureFixture) -> None:
    """The client gets a generic problem with the request id; the log gets the traceback."""
    hooks = Hooks()
    app = RequestContextMiddleware(ErrorBoundaryMiddleware(failing_app, hooks=hooks))
    with capture_events(hooks) as events, caplog.at_level(logging.ERROR, "bastion.errors"):
        response = await call(app, http_scope("/boom"))
    assert 500 == response.status
    assert "application/problem+json" == response.headers["content-type"]
    problem = response.json()
    assert response.headers["x-request-id"] == problem["request_id"]
    assert 500 == problem["status"]
    assert b"hunter2" not in response.body
    assert b"RuntimeError" not in response.body
    assert b"Traceback" not in response.body
    assert "hunter2" in caplog.text  # the operator sees the real error
    assert problem["request_id"] in caplog.text
    [event] = events
    assert isinstance(event, UnhandledError)
    assert (problem["request_id"], "builtins.RuntimeError", False) == (
        event.request_id,
        event.error_type,
        event.response_started,
    )


async def test_error_after_response_started_closes_instead_of_lying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once headers are sent, no second response is attempted and the body is not completed."""

    async def half_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("stream broke")

    app = ErrorBoundaryMiddleware(half_app)
    with caplog.at_level(logging.ERROR, "bastion.errors"):
        response = await call(app, http_scope())
    starts = [m for m in response.messages if m["type"] == "http.response.start"]
    assert 1 == len(starts)
    assert 200 == response.status
    # The last message still says more_body: the server sees an unfinished response and closes.
    assert response.messages[-1].get("more_body") is True
    assert "response already started" in caplog.text


async def test_websocket_errors_close_with_1011() -> None:
    """A failing WebSocket handler is closed with 'internal error'."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "websocket", "path": "/ws", "headers": [], "client": None}
    await ErrorBoundaryMiddleware(failing_app)(scope, receive, send)
    assert [{"type": "websocket.close", "code": 1011}] == sent


async def test_a_gone_client_does_not_raise_from_the_boundary() -> None:
    """If sending the problem fails too, the boundary swallows it (and logs at debug)."""

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def broken_send(message: Message) -> None:
        raise OSError("connection reset")

    await ErrorBoundaryMiddleware(failing_app)(http_scope(), receive, broken_send)


async def test_cancellation_is_not_swallowed() -> None:
    """Cancellation (a BaseException) passes through the boundary."""
    import anyio

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(10)

    with anyio.move_on_after(0.01) as cancel_scope:
        await call(ErrorBoundaryMiddleware(slow_app), http_scope())
    assert cancel_scope.cancelled_caught


async def test_started_response_is_detected_through_the_request_context() -> None:
    """Under the context middleware, the boundary relies on context.status; it still never
    sends a second response start."""

    async def half_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    app = RequestContextMiddleware(ErrorBoundaryMiddleware(half_app))
    response = await call(app, http_scope())
    starts = [m for m in response.messages if m["type"] == "http.response.start"]
    assert [200] == [m["status"] for m in starts]
