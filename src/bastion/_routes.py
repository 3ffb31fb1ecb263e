"""Route templates, resolved before the framework routes the request.

Metrics, logs, rate-limit keys and cache policies need the route *template* (``/albums/{id}``),
never the raw path: raw paths are unbounded label values and a free denial of service on a metrics
backend. bastion's layers run before the framework's router, so this module reads the app's route
table once and matches paths itself.

Starlette and FastAPI routes are read by duck typing (``path_regex``, ``path``, ``methods``,
``routes``) so that the core never imports Starlette. Every route's regex becomes one alternative
of a single compiled pattern, so a lookup is one C-level regex match however many routes there
are; results are memoized per ``(method, path)`` in a bounded table.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["AppRouteResolver", "RouteResolver", "StarletteRouteResolver"]

_NAMED_GROUP = re.compile(r"\(\?P<[^>]+>")
_MEMO_LIMIT = 4096


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
        if len(self._memo) >= _MEMO_LIMIT:
            # Unbounded distinct paths (ids, scanners) must not grow memory; the combined regex
            # keeps a cold lookup cheap, so forgetting everything at once is good enough.
            self._memo.clear()
        self._memo[key] = template
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
