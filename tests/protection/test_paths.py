"""Paths with NUL bytes, traversal segments or invalid UTF-8 are refused with 400."""

from __future__ import annotations

from typing import Any

import pytest

from bastion._clock import ManualClock
from bastion.events import PathRejected
from bastion.protection import Bans, GuardMiddleware, PathProblem, path_problem
from bastion.types import Message, Scope
from tests.protection.conftest import recorder, recording_app

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("raw_path", "expected"),
    [
        (b"/items/42", None),
        (b"/files/report.v2.pdf", None),
        (b"/a/.../b", None),
        (b"/a..b/c..", None),
        (b"/caf%C3%A9", None),
        ("/café".encode(), None),
        (b"/discount/50%25", None),
        (b"/a/../etc/passwd", "traversal"),
        (b"/..", "traversal"),
        (b"/a/%2e%2e/b", "traversal"),
        (b"/a/%2E%2e/b", "traversal"),
        (b"/a/.%2e/b", "traversal"),
        (b"/a/%252e%252e/b", "traversal"),
        (b"/a/%25252e%25252e/b", "traversal"),
        (b"/a/..%2fb", "traversal"),
        (b"/a/..%5cb", "traversal"),
        (b"/a\\..\\b", "traversal"),
        (b"/a%00.txt", "nul"),
        (b"/a%2500.txt", "nul"),
        (b"/a\x00b", "nul"),
        (b"/a/%c0%ae%c0%ae/b", "invalid_utf8"),
        (b"/a/%ff", "invalid_utf8"),
        (b"/a/\xff", "invalid_utf8"),
        (b"/a/%25ff", "invalid_utf8"),
    ],
)
def test_path_problems(raw_path: bytes, expected: PathProblem | None) -> None:
    """Each encoding of a bad path is caught; ordinary paths pass."""
    assert expected == path_problem({"raw_path": raw_path, "path": "ignored"})


def test_the_decoded_path_is_checked_without_raw_path() -> None:
    """Servers that give no raw_path still get the check, on the decoded path."""
    assert "traversal" == path_problem({"path": "/a/../b"})
    assert None is path_problem({"path": "/a/b"})


def test_the_query_string_is_not_part_of_the_path() -> None:
    """A raw_path that carries the query string is judged on its path only."""
    assert None is path_problem({"raw_path": b"/search?q=../..", "path": "/search"})


async def test_a_bad_path_is_answered_400_before_the_app_and_counts_as_an_offence() -> None:
    """The app never sees it; the client gets problem+json; repeated, it bans."""
    app, called = recording_app()
    hooks, rejected = recorder(PathRejected)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    bans = Bans(clock=ManualClock(), client_errors=2)
    guard = GuardMiddleware(app, bans=bans, hooks=hooks)
    scope: Scope = {
        "type": "http", "method": "GET", "path": "/a/../b", "raw_path": b"/a/%2e%2e/b",
        "headers": [], "client": ("203.0.113.7", 1), "scheme": "http",
    }  # fmt: skip
    await guard(scope, receive, send)
    assert 400 == sent[0]["status"]
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert b"'..' segment" in sent[1]["body"]
    assert [] == called
    assert [("traversal", 400, "GET")] == [(e.problem, e.status, e.method) for e in rejected]
    await guard(scope, receive, send)
    assert 0 < bans.banned_for("203.0.113.7")


async def test_path_checks_can_be_turned_off() -> None:
    """check_paths=False hands every path to the app."""
    app, called = recording_app()

    async def nothing(*args: Any) -> Any:
        return None

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/a/../b",
        "headers": [],
        "client": None,
    }
    await GuardMiddleware(app, check_paths=False)(scope, nothing, nothing)
    assert ["/a/../b"] == called
