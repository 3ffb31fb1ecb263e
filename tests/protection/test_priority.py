"""Request priorities: rules by route, by principal, and by function."""

from __future__ import annotations

import pytest

from bastion.context import RequestContext
from bastion.exceptions import ConfigurationError
from bastion.protection import Priorities, PriorityRule
from bastion.types import Scope
from tests.asgi import http_scope


def context_for(
    path: str, *, route: str | None = None, principal: str | None = None, method: str = "GET"
) -> RequestContext:
    """A request context as bastion's pipeline would build it."""
    return RequestContext("rid", "tid", method, path, route, "127.0.0.1", principal=principal)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/exports/*=-10", PriorityRule(path="/exports/*", priority=-10)),
        ("GET /health*=100", PriorityRule(path="GET /health*", priority=100)),
        ({"path": "/a", "priority": 3}, PriorityRule(path="/a", priority=3)),
    ],
)
def test_priority_rules_parse_the_shorthand_and_mappings(
    value: str | dict[str, object], expected: PriorityRule
) -> None:
    """``PATTERN=PRIORITY`` and mappings of the fields both build rules."""
    assert expected == PriorityRule.from_value(value)


@pytest.mark.parametrize(
    "value",
    ["/exports/*", "/exports/*=high", "=3", {"path": "/a"}, {"path": "/a", "priority": 1.5}],
)
def test_invalid_priority_rules_are_configuration_errors(value: object) -> None:
    """A rule without a pattern or an integer priority fails with a readable message."""
    with pytest.raises(ConfigurationError, match="priority"):
        PriorityRule.from_value(value)  # type: ignore[arg-type]


def test_the_priority_adds_route_principal_and_what_was_there() -> None:
    """Route rule, principal rule and an outer layer's priority add up, on the context."""
    priorities = Priorities(["/reports/*=-5"], principals={"key:gold": 20})
    context = context_for("/reports/1", route="/reports/{id}", principal="key:gold")
    context.priority = 1

    assert 16 == priorities.assign(http_scope("/reports/1"), context)
    assert 16 == context.priority


def test_an_unknown_principal_and_an_unmatched_route_keep_priority_zero() -> None:
    """Requests no rule mentions keep the neutral priority 0."""
    priorities = Priorities(["/reports/*=-5"], principals={"key:gold": 20})
    context = context_for("/albums", principal="key:free")

    assert 0 == priorities.assign(http_scope("/albums"), context)


def test_a_priority_function_has_the_last_word() -> None:
    """The function's integer replaces the rules' result; ``None`` keeps it."""

    def by_header(scope: Scope) -> int | None:
        return 50 if (b"x-internal", b"1") in scope["headers"] else None

    priorities = Priorities(["/reports/*=-5"], function=by_header)

    internal = http_scope("/reports/1", headers=[(b"x-internal", b"1")])
    assert 50 == priorities.assign(internal, context_for("/reports/1"))
    assert -5 == priorities.assign(http_scope("/reports/1"), context_for("/reports/1"))


def test_a_principal_priority_must_be_an_integer() -> None:
    """Principal priorities from JSON settings are checked at startup."""
    with pytest.raises(ConfigurationError, match="key:gold"):
        Priorities(principals={"key:gold": "high"})  # type: ignore[dict-item]
