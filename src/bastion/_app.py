"""``Bastion(app)``: the whole pipeline, the lifespan and the ops endpoints in one line."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from bastion._asgi import send_json
from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._ops import OpsRoutes
from bastion._pipeline import PipelineMiddleware
from bastion._routes import AppRouteResolver
from bastion._shutdown import ShutdownCoordinator
from bastion._urls import redact_url
from bastion.context import ContextBuilder
from bastion.events import Hooks
from bastion.exceptions import LifespanError, StoreError
from bastion.health import (
    CheckResult,
    HealthRegistry,
    HealthStatus,
    health_endpoints,
    store_check,
)
from bastion.observability import Observability
from bastion.ratelimit import RateLimitMiddleware
from bastion.settings import Settings, load_settings
from bastion.stores import Store, store_from_url
from bastion.types import AnyASGIApp, ASGIApp, Receive, Scope, Send

__all__ = ["Bastion"]

logger = logging.getLogger("bastion")

_NO_STORE = [(b"cache-control", b"no-store")]


@dataclass(frozen=True, slots=True)
class _Resource:
    name: str
    open: Callable[[], Awaitable[None]] | None
    close: Callable[[], Awaitable[None]] | None


class Bastion:
    """Makes an ASGI app production-grade: installs bastion's pipeline, lifespan and ops routes.

    With a Starlette or FastAPI app, the layers are added with ``app.add_middleware`` and the app
    itself is what you serve::

        app = FastAPI()
        bastion = Bastion(app)          # uvicorn main:app

    Any other ASGI app (Litestar, a bare callable) cannot be modified in place: serve the
    ``Bastion`` object instead, which is an ASGI app wrapping yours::

        app = Bastion(litestar_app)     # uvicorn main:app

    Layers run outermost first (DESIGN §4): lifespan, request context, error boundary, ops
    endpoints, then your app; they are fused into one ``PipelineMiddleware`` so a request pays
    for one layer. Middleware you add *before* calling ``Bastion(app)`` runs inside
    bastion's layers (it sees request ids, its errors become problems); middleware added after
    runs outside them.

    Args:
        app: the ASGI application.
        settings: bastion's settings; read from the environment and ``.env`` when omitted.
        hooks: the event registry features publish to (a new one when omitted).
        clock: time source for every time-based component (tests pass a ``ManualClock``).

    Raises:
        ConfigurationError: the settings are invalid (the message names the variables).
    """

    def __init__(
        self,
        app: AnyASGIApp,
        settings: Settings | None = None,
        *,
        hooks: Hooks | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.settings = settings if settings is not None else load_settings()
        self.hooks = hooks if hooks is not None else Hooks()
        self.clock = clock
        self.routes = AppRouteResolver(app)
        self.ops = OpsRoutes()
        self.store: Store = self._build_store()
        self.health = HealthRegistry(
            clock=clock,
            default_timeout_s=self.settings.health.check_timeout_s,
            cache_s=self.settings.health.cache_s,
        )
        # Features degrade when the store is down (DESIGN §1.4), so by default a store outage makes
        # readiness DEGRADED (still 200): taking every worker out of rotation because Redis is
        # down would turn a degraded service into an outage. An app that declared the store
        # required (BASTION_STORES__REQUIRED_AT_STARTUP) is not ready without it.
        self.health.add(
            "store",
            store_check(self.store),
            groups=("ready",),
            critical=self.settings.stores.required_at_startup,
        )
        self.observability = Observability(self.settings, hooks=self.hooks, clock=clock)
        self.metrics = self.observability.registry
        self.health.add("event_loop", self._loop_check, groups=("ready",), critical=False)
        # Built even without configured limits: ``bastion.limit(...)`` dependencies use it.
        self._ratelimit_options = RateLimitMiddleware.options_from_settings(
            self.settings.ratelimit, store=self.store, hooks=self.hooks, clock=clock
        )
        self.ratelimiter = self._ratelimit_options["limiter"]
        self.shutdown_coordinator = ShutdownCoordinator(
            pre_stop_delay_s=self.settings.shutdown.pre_stop_delay_s,
            drain_timeout_s=self.settings.shutdown.drain_timeout_s,
            clock=clock,
        )
        self.shutdown_coordinator.on_drain(self.health.set_draining)
        # Opened first and closed last: logging is configured before anything else logs, and
        # still writes while the rest shuts down.
        self._resources: list[_Resource] = [
            _Resource("observability", self.observability.open, self.observability.close),
            _Resource("store", self._open_store, self.store.aclose),
        ]
        self._opened: list[_Resource] = []
        self._add_ops_endpoints()
        self._asgi = self._install(app)

    # -- public API -------------------------------------------------------------------------

    def add_resource(
        self,
        name: str,
        *,
        open: Callable[[], Awaitable[None]] | None = None,  # noqa: A002 - mirrors close
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Open ``open`` at startup (after resources added before it) and ``close`` at shutdown
        (in reverse order). A failure to open stops the startup with ``name`` in the message."""
        self._resources.append(_Resource(name, open, close))

    def limit(self, rates: str, /, **options: Any) -> Any:
        """A FastAPI dependency limiting a route: ``dependencies=[bastion.limit("100/minute")]``.

        Shares bastion's limiter (its store, outage policy and events); ``options`` are those of
        ``bastion.ratelimit.limit`` (``key``, ``cost``, ``name``, ``algorithm``, ``per_route``).
        """
        from bastion.ratelimit import limit  # loads FastAPI's dependency machinery: only here

        return limit(rates, limiter=self.ratelimiter, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the wrapped app through bastion's pipeline (for non-Starlette apps)."""
        await self._asgi(scope, receive, send)

    async def startup(self, scope: Scope | None = None) -> None:
        """Open every resource in order. Called by the lifespan; call it yourself without one.

        Raises:
            LifespanError: a resource failed to open; the ones already open are closed again.
        """
        self.routes.refresh()
        if scope is not None:
            scope.setdefault("state", {})["bastion"] = self
        for resource in self._resources:
            if resource.open is not None:
                try:
                    await resource.open()
                except LifespanError:
                    await self.shutdown()
                    raise
                except Exception as exc:  # any failure to open is reported by resource name
                    await self.shutdown()
                    raise LifespanError(f"could not open {resource.name}: {exc}") from exc
            self._opened.append(resource)
        self.health.mark_started()
        self.shutdown_coordinator.install_signal_hook()

    async def shutdown(self) -> None:
        """Close the opened resources in reverse order; every one is tried even if one fails.

        Raises:
            LifespanError: naming each resource that failed to close.
        """
        # Not ready from now on; let the requests still in flight finish before closing anything.
        await self.shutdown_coordinator.drain()
        self.shutdown_coordinator.uninstall_signal_hook()
        failures = []
        while self._opened:
            resource = self._opened.pop()
            if resource.close is None:
                continue
            try:
                await resource.close()
            except Exception as exc:  # keep closing the rest; report all at the end
                logger.exception("closing %s failed", resource.name)
                failures.append(f"{resource.name}: {exc}")
        if failures:
            raise LifespanError("could not close " + "; ".join(failures))

    # -- construction -----------------------------------------------------------------------

    async def _loop_check(self) -> CheckResult:
        """DEGRADED while the event loop is blocked for longer than the configured lag."""
        lag = self.observability.loop_lag.take_max()
        limit = self.settings.health.loop_lag_degraded_s
        status = HealthStatus.DEGRADED if lag > limit else HealthStatus.UP
        return CheckResult(status, {"max_lag_s": round(lag, 6), "degraded_above_s": limit})

    def _build_store(self) -> Store:
        stores = self.settings.stores
        return store_from_url(
            self.settings.redis_url,
            prefix=stores.key_prefix,
            max_entries=stores.memory_max_entries,
            max_bytes=stores.memory_max_bytes,
            socket_timeout_s=stores.redis_socket_timeout_s,
            connect_timeout_s=stores.redis_connect_timeout_s,
            max_connections=stores.redis_max_connections,
            failure_threshold=stores.gate_failure_threshold,
            base_delay_s=stores.gate_base_delay_s,
            max_delay_s=stores.gate_max_delay_s,
            hooks=self.hooks,
            clock=self.clock,
        )

    async def _open_store(self) -> None:
        try:
            await self.store.ping()
        except StoreError as exc:
            where = redact_url(self.settings.redis_url or "memory")
            if self.settings.stores.required_at_startup:
                raise LifespanError(
                    f"store {where} did not answer ({exc}); it is required at startup "
                    "(BASTION_STORES__REQUIRED_AT_STARTUP=true)"
                ) from exc
            logger.warning(
                "store %s did not answer at startup (%s); starting degraded, "
                "features apply their outage policy until it answers",
                where,
                exc,
            )

    def _add_ops_endpoints(self) -> None:
        settings = self.settings

        async def index(scope: Scope, receive: Receive, send: Send) -> None:
            await send_json(
                send,
                {
                    "service": settings.service_name,
                    "bastion": version("bastion"),
                    "endpoints": [settings.ops.prefix + path for path in self.ops.paths()],
                },
                headers=_NO_STORE,
            )

        self.ops.add("/", index)
        admin_key = settings.ops.admin_key
        endpoints = health_endpoints(
            self.health, admin_key=admin_key.get_secret_value() if admin_key else None
        )
        endpoints.update(
            self.observability.endpoints(
                admin_key=admin_key.get_secret_value() if admin_key else None
            )
        )
        for path, endpoint in endpoints.items():
            self.ops.add(path, endpoint)

    def _pipeline_options(self) -> dict[str, Any]:
        """Options of the ``PipelineMiddleware`` that carries bastion's layers."""
        settings = self.settings
        context = ContextBuilder(
            request_id_header=settings.context.request_id_header,
            trust_incoming_request_id=settings.context.trust_incoming_request_id,
            trusted_proxies=settings.context.trusted_proxies,
            forwarded_header=settings.context.forwarded_header,
            route_resolver=self.routes,
            clock=self.clock,
        )
        return {
            "startup": self.startup,
            "shutdown": self.shutdown,
            "context": context,
            "hooks": self.hooks,
            "ops_prefix": settings.ops.prefix if settings.ops.enabled else None,
            "ops_routes": self.ops,
            "coordinator": self.shutdown_coordinator,
            "observer": self.observability.telemetry,
        }

    def _inner_layers(self) -> list[tuple[type[Any], dict[str, Any]]]:
        """The capability layers below the pipeline, innermost first (DESIGN §4, read upward)."""
        settings = self.settings
        layers: list[tuple[type[Any], dict[str, Any]]] = []
        if settings.compression.enabled:
            from bastion.compression import CompressionMiddleware, compression_options

            layers.append((CompressionMiddleware, compression_options(settings.compression)))
        limits = settings.ratelimit
        if limits.enabled and (limits.rate or limits.global_rate or limits.rules):
            # Only when limits are configured: with none, the layer would cost every request
            # and decide nothing (route dependencies from ``bastion.limit`` work without it).
            layers.append((RateLimitMiddleware, self._ratelimit_options))
        return layers

    def _install(self, app: ASGIApp) -> ASGIApp:
        options = self._pipeline_options()
        add_middleware = getattr(app, "add_middleware", None)
        if add_middleware is not None and hasattr(app, "exception_handlers"):
            from bastion.integrations.starlette import (
                app_error_responder,
                install_problem_handlers,
                replace_server_error_middleware,
            )
            from bastion.ratelimit import RateLimitRefused, rate_limit_problem

            install_problem_handlers(app)
            replace_server_error_middleware(app)
            app.add_exception_handler(RateLimitRefused, rate_limit_problem)  # type: ignore[attr-defined]
            # add_middleware puts each layer outside the ones added before it.
            for layer, layer_options in self._inner_layers():
                add_middleware(layer, **layer_options)
            add_middleware(PipelineMiddleware, **options, responder=app_error_responder(app))
            if hasattr(app, "state"):
                app.state.bastion = self
                app.state.bastion_ratelimiter = self.ratelimiter
            return app
        for layer, layer_options in self._inner_layers():
            app = layer(app, **layer_options)
        return PipelineMiddleware(app, **options)
