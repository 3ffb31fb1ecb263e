"""The ops endpoints (health, metrics, dashboard) under one prefix, served before the app.

They are plain ASGI handlers registered by capabilities on ``Bastion.ops``; serving them here
rather than as framework routes keeps them out of the app's OpenAPI schema, reachable for any
framework, and independent of the app's own middleware (a saturated app still answers probes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bastion._asgi import scope_path
from bastion.problem import send_problem
from bastion.types import ASGIApp, Receive, Scope, Send

__all__ = ["OpsEndpoint", "OpsMiddleware", "OpsRoutes"]

OpsEndpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class OpsRoutes:
    """The registry of ops endpoints: ``(method, path under the prefix) -> handler``."""

    __slots__ = ("_routes",)

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, OpsEndpoint]] = {}

    def add(self, path: str, endpoint: OpsEndpoint, *, methods: tuple[str, ...] = ("GET",)) -> None:
        """Serve ``endpoint`` at ``{prefix}{path}`` for ``methods`` (HEAD follows GET)."""
        by_method = self._routes.setdefault(path, {})
        for method in methods:
            by_method[method] = endpoint
            if method == "GET":
                by_method.setdefault("HEAD", endpoint)

    def paths(self) -> list[str]:
        """The registered paths, sorted."""
        return sorted(self._routes)

    async def serve(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Answer a request for ``path`` (relative to the prefix): the endpoint, 404 or 405."""
        handlers = self._routes.get(path or "/")
        if handlers is None:
            await send_problem(scope, send, 404, detail="No ops endpoint at this path.")
            return
        endpoint = handlers.get(scope["method"])
        if endpoint is None:
            allow = ", ".join(sorted(handlers)).encode()
            await send_problem(scope, send, 405, headers=[(b"allow", allow)])
            return
        await endpoint(scope, receive, send)


class OpsMiddleware:
    """Serves ``OpsRoutes`` under ``prefix``; everything else goes to the app.

    Args:
        app: the ASGI app to wrap.
        prefix: where the ops endpoints live (``/_bastion``).
        routes: the endpoints to serve (may grow until the first request).
    """

    __slots__ = ("_prefix", "_slash_prefix", "app", "routes")

    def __init__(self, app: ASGIApp, /, *, prefix: str, routes: OpsRoutes) -> None:
        self.app = app
        self.routes = routes
        self._prefix = prefix
        self._slash_prefix = prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch ``{prefix}/...`` to an ops endpoint, anything else to the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if scope.get("root_path"):
            path = scope_path(scope)
        if path != self._prefix and not path.startswith(self._slash_prefix):
            await self.app(scope, receive, send)
            return
        await self.routes.serve(scope, receive, send, path[len(self._prefix) :])
