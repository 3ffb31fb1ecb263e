"""Route templates, resolved before the framework routes the request.

Metrics, logs, rate-limit keys and cache policies need the route *template* (``/albums/{id}``),
never the raw path: raw paths are unbounded label values and a free denial of service on a metrics
backend. bastion's layers run before the framework's router, so this module reads the app's route
table once and matches paths itself.

Starlette and FastAPI routes are read by duck typing (``path_regex``, ``path``, ``methods``,
``routes``) so that the core never imports Starlette. Every route's regex becomes one alternative
of a single compiled pattern, so a lookup is one C-level regex match however many routes there
are; results are memoized per ``(method, path)`` in a bounded table.

The capabilities' ``[METHODS ]PATTERN`` rules (rate limits, auth requirements, shedding,
deadlines, exclusions) are ``RoutePattern``s matched against those templates; ``RouteTable`` finds
the first matching rule's value, and ``ScopeRoutes`` resolves a template when no request context
carries one.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from bastion._asgi import scope_path
from bastion.exceptions import ConfigurationError
from bastion.types import Scope

__all__ = [
    "AppRouteResolver",
    "RouteEndpoint",
    "RoutePattern",
    "RouteResolver",
    "RouteTable",
    "ScopeRoutes",
    "StarletteRouteResolver",
    "compile_glob",
    "compile_patterns",
    "memoize_route",
    "remember",
    "route_endpoints",
]

_NAMED_GROUP = re.compile(r"\(\?P<[^>]+>")
_METHODS = re.compile(r"[A-Z]+(?:,[A-Z]+)*")
_MEMO_LIMIT = 4096
_UNSEEN = object()
"""What a memo lookup returns for a key it has never seen (``None`` is a valid answer)."""

T = TypeVar("T")


class RouteResolver(Protocol):
    """Finds the route template a request will be routed to."""

    def resolve(self, method: str, path: str) -> str | None:
        """Return the template of the route matching ``method`` and ``path``, or ``None``."""
        ...


@dataclass(frozen=True, slots=True)
class _Entry:
    pattern: str
    template: str
    methods: frozenset[str] | None


def _inner_pattern(route: Any) -> str:
    pattern: str = route.path_regex.pattern
    # Every Starlette route regex is anchored as ^...$; groups are renamed away because group
    # names repeat across routes and only the alternative that matched matters here.
    return _NAMED_GROUP.sub("(?:", pattern.removeprefix("^").removesuffix("$"))


def _expand(routes: Any) -> Any:
    """FastAPI >= 0.16x keeps included routers as lazy branches; expand them to real routes."""
    if "fastapi" not in sys.modules:
        return routes
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are plain routes already
        return routes
    expanded: list[Any] = []
    for route in routes:
        if type(route).__name__ == "_IncludedRouter":
            expanded.extend(iter_route_contexts([route]))
        else:
            expanded.append(route)
    return expanded


def _flatten(routes: Any, prefix_pattern: str, prefix_template: str) -> list[_Entry]:
    entries: list[_Entry] = []
    for route in _expand(routes):
        if not hasattr(route, "path_regex"):
            continue  # Host routes and exotic routes: their requests resolve to no template.
        children = getattr(route, "routes", None)
        if children is not None and getattr(route, "endpoint", None) is None:
            # A Mount: its regex is "<prefix>/(?P<path>.*)"; children match the remainder.
            mount_pattern = _inner_pattern(route).removesuffix("/(?:.*)")
            nested = _flatten(
                children, prefix_pattern + mount_pattern, prefix_template + route.path
            )
            if nested:
                entries.extend(nested)
                continue
            # A Mount of a plain ASGI app (static files, a sub-app): one template for all of it.
            entries.append(
                _Entry(
                    prefix_pattern + mount_pattern + "/.*",
                    prefix_template + route.path + "/{path:path}",
                    None,
                )
            )
            continue
        methods = getattr(route, "methods", None)
        entries.append(
            _Entry(
                prefix_pattern + _inner_pattern(route),
                prefix_template + route.path,
                frozenset(methods) if methods else None,
            )
        )
    return entries


class StarletteRouteResolver:
    """Resolves templates from a Starlette/FastAPI route table.

    Matches as Starlette's router does: the first route whose path *and* method match wins;
    failing that, the first route whose path matches (the framework will answer 405).

    Args:
        routes: the app's ``routes`` (read when the resolver is built; build it at startup).
    """

    __slots__ = ("_entries", "_match", "_memo")

    def __init__(self, routes: Any) -> None:
        self._load(routes)

    def _load(self, routes: Any) -> None:
        self._entries = _flatten(routes, "", "")
        if self._entries:
            alternatives = "|".join(
                f"(?P<r{index}>{entry.pattern})" for index, entry in enumerate(self._entries)
            )
            self._match = re.compile(f"^(?:{alternatives})$").match
        else:
            self._match = re.compile(r"(?!)").match
        self._memo: dict[tuple[str, str], str | None] = {}

    def resolve(self, method: str, path: str) -> str | None:
        """Return the template for ``method`` and ``path`` (memoized), or ``None``."""
        key = (method, path)
        try:
            return self._memo[key]
        except KeyError:
            pass
        template = self._lookup(method, path)
        remember(self._memo, key, template)
        return template

    def _lookup(self, method: str, path: str) -> str | None:
        found = self._match(path)
        if found is None or found.lastgroup is None:
            return None
        first = int(found.lastgroup[1:])
        entry = self._entries[first]
        if entry.methods is None or method in entry.methods:
            return entry.template
        # The first path match refuses this method; a later route may accept it (rare).
        for index in range(first + 1, len(self._entries)):
            candidate = self._entries[index]
            if candidate.methods is not None and method not in candidate.methods:
                continue
            if re.fullmatch(candidate.pattern, path):
                return candidate.template
        return entry.template


class AppRouteResolver(StarletteRouteResolver):
    """Resolves against an app's current route table, read on first use or on ``refresh()``.

    Routes are usually added after ``Bastion(app)`` (decorators run later in the module), so the
    table is read lazily; the lifespan calls ``refresh()`` at startup. An app whose routes bastion
    cannot read (not Starlette-shaped) resolves every request to ``None``. It is a
    ``StarletteRouteResolver`` whose table can be reloaded, so a lookup costs no extra call.
    """

    __slots__ = ("_app", "_loaded")

    def __init__(self, app: Any) -> None:
        self._app = app
        self._loaded = False
        super().__init__(())

    def refresh(self) -> None:
        """Re-read the app's routes."""
        routes = getattr(self._app, "routes", None)
        self._load(routes if routes is not None else ())
        self._loaded = True

    def _lookup(self, method: str, path: str) -> str | None:
        if not self._loaded:
            self.refresh()
        return super()._lookup(method, path)


class ScopeRoutes:
    """The route template of a request that no ``RequestContext`` describes.

    Middleware used without bastion's request context resolves templates itself: with the
    ``route_resolver`` it was given, else with an ``AppRouteResolver`` built on first use from the
    app in the scope (``scope["app"]``, set by Starlette). Without either, templates are ``None``.

    Args:
        resolver: the resolver to use, or ``None`` to build one from ``scope["app"]``.
    """

    __slots__ = ("_resolver",)

    def __init__(self, resolver: RouteResolver | None = None) -> None:
        self._resolver = resolver

    def resolve(self, scope: Scope, method: str, path: str | None = None) -> str | None:
        """The template for ``method`` and ``path`` (default: the path the app routes on)."""
        resolver = self._resolver
        if resolver is None:
            app = scope.get("app")
            if app is None or not hasattr(app, "routes"):
                return None
            resolver = self._resolver = AppRouteResolver(app)
        if path is None:
            path = scope["path"] if not scope.get("root_path") else scope_path(scope)
        if type(resolver) is AppRouteResolver:  # its memo read here: one call less per request
            template = resolver._memo.get((method, path), _UNSEEN)
            if template is not _UNSEEN:
                return template  # type: ignore[return-value]
        return resolver.resolve(method, path)


def compile_glob(pattern: str) -> Callable[[str], re.Match[str] | None]:
    """The ``fullmatch`` of a path pattern: ``*`` is any characters, the rest literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*"))).fullmatch


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
        self._match = compile_glob(path)

    def matches(self, method: str, target: str) -> bool:
        """Whether a ``method`` request whose route template (or path) is ``target`` matches."""
        methods = self.methods
        return (methods is None or method in methods) and self._match(target) is not None

    def matches_any(self, method: str, targets: Iterable[str]) -> bool:
        """Whether a ``method`` request matches by any of ``targets`` (template, raw path)."""
        methods = self.methods
        if methods is not None and method not in methods:
            return False
        match = self._match
        return any(match(target) is not None for target in targets)

    def __repr__(self) -> str:
        return f"RoutePattern({self.text!r})"


def compile_patterns(patterns: Iterable[str], variable: str = "") -> tuple[RoutePattern, ...]:
    """Compile ``[METHODS ]PATTERN`` strings.

    Args:
        patterns: the patterns.
        variable: the setting they come from (``BASTION_AUTH__EXCLUDE``), named in errors.

    Raises:
        ConfigurationError: for an invalid pattern, prefixed by ``variable`` when given.
    """
    try:
        return tuple(RoutePattern(pattern) for pattern in patterns)
    except ConfigurationError as exc:
        if not variable:
            raise
        raise ConfigurationError(f"{variable}: {exc}") from None


def remember(memo: dict[tuple[str, str], T], key: tuple[str, str], value: T) -> None:
    """Remember ``value`` for a (method, raw path) in a memo of bounded size.

    Distinct paths are unbounded (ids, scanners) and must not grow memory; what is forgotten is
    cheap to find again, so a full memo is forgotten all at once.
    """
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def memoize_route(
    memo: dict[tuple[str, str], T], key: tuple[str, str], value: T, *, template: bool
) -> None:
    """Remember ``value`` for ``key`` (a method and a route template or raw path).

    Templates are few and always remembered; raw paths (requests no route matched: ids,
    scanners) are unbounded, so they are remembered only while the memo has room. A full memo
    is forgotten at once when a template needs the room.
    """
    if template or len(memo) < _MEMO_LIMIT:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = value


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
        memoize_route(self._memo, key, value, template=route is not None)
        return value


class RouteEndpoint(NamedTuple):
    """One route of an app, with the endpoint behind it: where capabilities find what a route's
    endpoint declared (``@cache``, ``@bastion.rate_limit``) by the template of a request."""

    template: str
    """The full template, mount prefixes included: ``/api/albums/{album_id}``."""
    methods: frozenset[str] | None
    """The methods it accepts, ``None`` for any."""
    endpoint: Any
    """The endpoint function (or ASGI app) the route calls."""
    dependencies: tuple[str, ...] = ()
    """The names of the route's FastAPI dependencies (``Depends``, ``dependencies=[...]``)."""


def route_endpoints(app: Any, prefix: str = "") -> list[RouteEndpoint]:
    """Every route of ``app`` (an app or a router: anything with ``routes``), mounts expanded."""
    found: list[RouteEndpoint] = []
    for route in _expand(getattr(app, "routes", None) or ()):
        path = getattr(route, "path", None)
        if not isinstance(path, str) or not hasattr(route, "path_regex"):
            continue
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None and getattr(route, "routes", None) is not None:
            found.extend(route_endpoints(route, prefix + path))  # a Mount
            continue
        methods = getattr(route, "methods", None)
        dependant = getattr(route, "dependant", None)  # FastAPI routes only
        dependencies = tuple(
            getattr(dependency.call, "__qualname__", repr(dependency.call))
            for dependency in getattr(dependant, "dependencies", ())
        )
        found.append(
            RouteEndpoint(
                prefix + path, frozenset(methods) if methods else None, endpoint, dependencies
            )
        )
    return found
