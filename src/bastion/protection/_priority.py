"""Route patterns and request priorities, shared by load shedding and deadlines.

Both layers run before the framework routes the request, so what applies to a request is found
from its route template (``RequestContext.route``, resolved by bastion's request context) or,
without one, its raw path, by ``[METHODS ]PATTERN`` rules compiled once and memoized per route.

A request's priority (``RequestContext.priority``; higher is served first) is the sum of what an
outer layer already set, the first route rule that matches, and the rule for its principal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from bastion.context import RequestContext
from bastion.exceptions import ConfigurationError
from bastion.types import Scope

__all__ = [
    "PriorityFunc",
    "PriorityRule",
    "Priorities",
    "RoutePattern",
    "RouteTable",
    "route_target",
    "rule_from_value",
]

_METHODS = re.compile(r"[A-Z]+(?:,[A-Z]+)*")
_MEMO_LIMIT = 4096

T = TypeVar("T")

PriorityFunc = Callable[[Scope], int | None]
"""Returns a request's priority from its scope (``None``: keep the one the rules gave)."""


class RoutePattern:
    """``[METHODS ]PATTERN``: ``*`` matches any characters (``/`` included), the rest is literal.

    Args:
        text: e.g. ``/reports/*``, ``GET,HEAD /items/{id}`` or ``*``.

    Raises:
        ConfigurationError: when the methods are not capitals or the path does not start with
            ``/`` (nor is ``*``).
    """

    __slots__ = ("_match", "methods", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        methods, _, path = text.strip().rpartition(" ")
        methods = methods.strip()
        if methods and not _METHODS.fullmatch(methods):
            raise ConfigurationError(
                f"invalid pattern {text!r}: expected '[METHODS ]PATTERN' such as '/reports/*' or "
                "'GET,POST /items/{id}' (methods in capitals, comma-separated)"
            )
        if not (path.startswith("/") or path == "*"):
            raise ConfigurationError(
                f"invalid pattern {text!r}: the path pattern must start with '/' or be '*'"
            )
        self.methods = frozenset(methods.split(",")) if methods else None
        self._match = re.compile(".*".join(re.escape(part) for part in path.split("*"))).fullmatch

    def matches(self, method: str, target: str) -> bool:
        """Whether a ``method`` request whose route template (or path) is ``target`` matches."""
        methods = self.methods
        return (methods is None or method in methods) and self._match(target) is not None

    def __repr__(self) -> str:
        return f"RoutePattern({self.text!r})"


class RouteTable(Generic[T]):
    """The first matching pattern's value for a request, memoized per (method, route).

    Raw paths (requests no route matched) are unbounded, so they are memoized only while the
    table has room; route templates always are.

    Args:
        rules: ``(pattern, value)`` pairs, first match wins.
        default: the value when no pattern matches.
    """

    __slots__ = ("_default", "_memo", "_rules")

    def __init__(self, rules: Iterable[tuple[str | RoutePattern, T]], default: T) -> None:
        self._rules = tuple(
            (pattern if isinstance(pattern, RoutePattern) else RoutePattern(pattern), value)
            for pattern, value in rules
        )
        self._default = default
        self._memo: dict[tuple[str, str], T] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def lookup(self, method: str, route: str | None, path: str) -> T:
        """The value for a request (``route`` is its template, or ``None`` when none matched)."""
        if not self._rules:
            return self._default  # no pattern to match: skip building the memo key
        target = route if route is not None else path
        key = (method, target)
        try:
            return self._memo[key]
        except KeyError:
            pass
        value = self._default
        for pattern, candidate in self._rules:
            if pattern.matches(method, target):
                value = candidate
                break
        memo = self._memo
        if route is not None or len(memo) < _MEMO_LIMIT:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[key] = value
        return value


def route_target(scope: Scope, context: RequestContext | None) -> tuple[str, str | None, str]:
    """``(method, route template or None, path)`` of a request, for ``RouteTable.lookup``."""
    if context is not None:
        return context.method, context.route, context.path
    return scope.get("method", "GET"), None, scope["path"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorityRule:
    """A priority for the requests whose route template (or path) matches a pattern.

    Example::

        PriorityRule(path="GET /health*", priority=100)
        PriorityRule.from_value("/exports/*=-10")       # the settings shorthand
    """

    path: str
    """``[METHODS ]PATTERN``, e.g. ``/exports/*`` or ``POST /checkout``."""
    priority: int
    """Added to the request's priority; higher is served first, negative is served last."""

    @classmethod
    def from_value(cls, value: PriorityRule | str | Mapping[str, Any]) -> PriorityRule:
        """A rule from a ``PriorityRule``, ``"PATTERN=PRIORITY"`` or a mapping of its fields.

        Raises:
            ConfigurationError: when the value is none of those or a field is invalid.
        """
        rule = rule_from_value(
            cls, value, "priority", int, "'PATTERN=PRIORITY' such as '/exports/*=-10'"
        )
        priority: object = rule.priority  # rules from JSON may hold anything
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigurationError(f"priority rule {rule.path!r}: priority must be an integer")
        return rule


class _Rule(Protocol):
    @property
    def path(self) -> str: ...


R = TypeVar("R", bound=_Rule)


def rule_from_value(
    cls: type[R], value: object, field: str, convert: Callable[[str], object], example: str
) -> R:
    """A ``cls(path=..., <field>=...)`` rule from itself, ``"PATTERN=VALUE"`` or a mapping.

    The pattern is checked; the field's own checks are the caller's. ``example`` describes the
    shorthand in error messages.

    Raises:
        ConfigurationError: naming the rule.
    """
    kind = f"{field.removesuffix('_s')} rule"
    build: Callable[..., R] = cls
    if isinstance(value, cls):
        rule = value
    elif isinstance(value, str):
        path, separator, text = value.rpartition("=")
        try:
            converted = convert(text)
        except ValueError:
            separator = ""
        if not separator or not path.strip():
            raise ConfigurationError(f"invalid {kind} {value!r}: expected {example}")
        rule = build(path=path.strip(), **{field: converted})
    elif isinstance(value, Mapping):
        try:
            rule = build(**value)
        except TypeError as exc:
            raise ConfigurationError(
                f"invalid {kind} {dict(value)!r}: {exc}; fields are path and {field}"
            ) from None
    else:
        raise ConfigurationError(f"invalid {kind} {value!r}: expected a string or a mapping")
    RoutePattern(rule.path)
    return rule


class Priorities:
    """Sets ``RequestContext.priority`` from route rules, principals and a function.

    Args:
        rules: route rules (``PriorityRule``, ``"PATTERN=PRIORITY"`` or a mapping); the first
            match is added.
        principals: priority added for a principal (an API key id, a user), when one is known
            before the request is admitted (see docs/shedding.md).
        function: called last with the scope; an ``int`` replaces the priority, ``None`` keeps it.

    Raises:
        ConfigurationError: for an invalid rule or a non-integer principal priority.
    """

    __slots__ = ("_function", "_principals", "_routes")

    def __init__(
        self,
        rules: Iterable[PriorityRule | str | Mapping[str, Any]] = (),
        *,
        principals: Mapping[str, int] | None = None,
        function: PriorityFunc | None = None,
    ) -> None:
        compiled = [PriorityRule.from_value(rule) for rule in rules]
        self._routes = RouteTable([(rule.path, rule.priority) for rule in compiled], 0)
        self._principals = dict(principals or {})
        for principal, priority in self._principals.items():
            value: object = priority  # from JSON settings, may be anything
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigurationError(
                    f"priority of principal {principal!r} must be an integer, got {priority!r}"
                )
        self._function = function

    def __bool__(self) -> bool:
        return bool(self._routes) or bool(self._principals) or self._function is not None

    def assign(self, scope: Scope, context: RequestContext | None) -> int:
        """The request's priority; stored in ``context.priority`` when there is a context."""
        method, route, path = route_target(scope, context)
        priority = self._routes.lookup(method, route, path)
        if context is not None:
            priority += context.priority
            principal = context.principal
            if principal is not None and self._principals:
                priority += self._principals.get(principal, 0)
        function = self._function
        if function is not None:
            chosen = function(scope)
            if chosen is not None:
                priority = chosen
        if context is not None:
            context.priority = priority
        return priority
