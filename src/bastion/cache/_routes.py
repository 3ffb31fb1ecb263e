"""The endpoints behind each route template, read from a Starlette or FastAPI app's route table.

The middleware finds a route's policy by template before the framework routes the request; the
policy itself is an attribute of the endpoint function. Templates are built as
``bastion._routes`` builds them (mount prefix + route path), so the template a request context
holds finds its endpoint here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bastion._routes import _expand

__all__ = ["RouteEndpoint", "route_endpoints"]


class RouteEndpoint(NamedTuple):
    """One route of an app."""

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
