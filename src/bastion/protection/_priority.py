"""Route rules and request priorities, shared by load shedding and deadlines.

Both layers run before the framework routes the request, so what applies to a request is found
from its route template (``RequestContext.route``, resolved by bastion's request context) or,
without one, its raw path, by ``[METHODS ]PATTERN`` rules (``bastion._routes.RouteTable``).

A request's priority (``RequestContext.priority``; higher is served first) is the sum of what an
outer layer already set, the first route rule that matches, and the rule for its principal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bastion._routes import RoutePattern, RouteTable
from bastion.context import RequestContext
from bastion.exceptions import ConfigurationError
from bastion.types import Scope

__all__ = [
    "PriorityFunc",
    "PriorityRule",
    "Priorities",
    "route_target",
    "rule_from_value",
]

PriorityFunc = Callable[[Scope], int | None]
"""Returns a request's priority from its scope (``None``: keep the one the rules gave)."""


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
        principal_source: finds the principal of a request that no outer layer authenticated
            (``Bastion`` passes ``Authenticator.known_principal``: API keys this worker already
            verified); consulted only when ``principals`` is not empty.

    Raises:
        ConfigurationError: for an invalid rule or a non-integer principal priority.
    """

    __slots__ = ("_function", "_principal_source", "_principals", "_routes")

    def __init__(
        self,
        rules: Iterable[PriorityRule | str | Mapping[str, Any]] = (),
        *,
        principals: Mapping[str, int] | None = None,
        function: PriorityFunc | None = None,
        principal_source: Callable[[Scope], str | None] | None = None,
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
        self._principal_source = principal_source

    def __bool__(self) -> bool:
        return bool(self._routes) or bool(self._principals) or self._function is not None

    def assign(self, scope: Scope, context: RequestContext | None) -> int:
        """The request's priority; stored in ``context.priority`` when there is a context."""
        method, route, path = route_target(scope, context)
        priority = self._routes.lookup(method, route, path)
        if context is not None:
            priority += context.priority
        principals = self._principals
        if principals:
            principal = context.principal if context is not None else None
            if principal is None and self._principal_source is not None:
                principal = self._principal_source(scope)
            if principal is not None:
                priority += principals.get(principal, 0)
        function = self._function
        if function is not None:
            chosen = function(scope)
            if chosen is not None:
                priority = chosen
        if context is not None:
            context.priority = priority
        return priority
