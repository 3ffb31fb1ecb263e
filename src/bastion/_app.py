"""``Bastion(app)``: the whole pipeline, the lifespan and the ops endpoints in one line."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import version
from typing import Any, ParamSpec, TypeVar

from bastion._asgi import send_json
from bastion._clock import SYSTEM_CLOCK, Clock
from bastion._ops import OpsRoutes
from bastion._pipeline import PipelineMiddleware
from bastion._routes import AppRouteResolver
from bastion._shutdown import ShutdownCoordinator
from bastion._urls import redact_url
from bastion.auth import ApiKeys, Authenticator, AuthMiddleware
from bastion.cache import (
    backend_for_store,
    cache_layer,
    cache_options,
    function_cache_metrics,
    invalidates,
    set_default_backend,
)
from bastion.cache import cache as cache_policy
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
from bastion.protection import (
    ConcurrencyLimiter,
    GuardMiddleware,
    SheddingMiddleware,
    deadline_layer,
)
from bastion.protection._deadline import DeadlineMiddleware
from bastion.ratelimit import RateLimitMiddleware, ratelimit_layer
from bastion.settings import Settings, load_settings
from bastion.stores import Store, store_from_url
from bastion.types import AnyASGIApp, ASGIApp, Receive, Scope, Send

__all__ = ["Bastion"]

logger = logging.getLogger("bastion")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., object])

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
        # One cache backend for the response cache and ``@cached`` functions: Redis when the store
        # is Redis (every worker shares it), else a byte-bounded memory LRU per process.
        self.cache_backend = backend_for_store(
            self.store,
            max_bytes=self.settings.cache.memory_max_bytes,
            max_ttl_s=self.settings.cache.max_ttl_s,
            compress_min_bytes=self.settings.cache.compress_min_bytes,
            hooks=self.hooks,
            clock=clock,
        )
        set_default_backend(self.cache_backend, hooks=self.hooks)
        function_cache_metrics(self.hooks, self.metrics)
        self.api_keys = ApiKeys.from_settings(
            self.settings.auth, store=self.store, hooks=self.hooks, clock=clock
        )
        """The API key manager (``await bastion.api_keys.create("ci", scopes=[...])``)."""
        # Built even with the middleware off: ``bastion.require(...)`` dependencies use it.
        self.authenticator = Authenticator.from_settings(
            self.settings.auth, api_keys=self.api_keys, hooks=self.hooks, clock=clock
        )
        self._guard_options = GuardMiddleware.options_from_settings(
            self.settings.guard,
            store=self.store,
            hooks=self.hooks,
            clock=clock,
            trusted_proxies=self.settings.context.trusted_proxies,
        )
        # The pipeline adds the fixed security headers (see _pipeline_options); the guard HSTS.
        self._guard_options["hsts_only"] = True
        self.bans = self._guard_options["bans"] if self.settings.guard.enabled else None
        """The abuse guard's ``Bans`` (``bastion.bans.unban(ip)``), or ``None`` without bans."""
        self._shedding_options: dict[str, Any] | None = None
        self.concurrency_limiter: ConcurrencyLimiter | None = None
        """The load shedder's limiter (its ``limit``, ``in_flight``, ``queued``), or ``None``
        when ``BASTION_SHEDDING__MAX_CONCURRENT`` is unset."""
        if self.settings.shedding.max_concurrent is not None:
            gauges = self._concurrency_gauges()
            self._shedding_options = SheddingMiddleware.options_from_settings(
                self.settings.shedding, hooks=self.hooks, clock=clock, on_change=gauges
            )
            self.concurrency_limiter = self._shedding_options["limiter"]
            gauges(self._shedding_options["limiter"])
            if self.settings.shedding.principal_priorities:
                # Shedding runs before authentication (a flood is shed before it costs a key
                # lookup); API keys this worker already verified still get their priority.
                self._shedding_options["principal_source"] = self.authenticator.known_principal
        self._deadline_options = DeadlineMiddleware.options_from_settings(
            self.settings.deadline, hooks=self.hooks, clock=clock
        )
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
            # Closed before the store: its invalidation subscription uses the store's client.
            _Resource("cache", None, self.cache_backend.aclose),
            _Resource("auth", None, self.authenticator.aclose),
        ]
        if self.bans is not None:
            # Follows the bans other workers decide; after the store, before the app's own.
            self._resources.append(_Resource("guard", self.bans.start, self.bans.aclose))
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

    def rate_limit(self, rates: str, /, **options: Any) -> Callable[[F], F]:
        """Declare a rate limit on an endpoint: ``@bastion.rate_limit("10/second; 300/hour")``.

        The decorator form of ``limit``. The limit is applied by bastion's rate-limit layer
        before the framework routes the request (in one decision with ``global_rate``), with
        bastion's limiter; the order with the route decorator does not matter. ``options`` are
        those of ``bastion.ratelimit.rate_limit`` (``name``, ``cost``, ``algorithm``,
        ``per_route``).
        """
        from bastion.ratelimit import rate_limit

        return rate_limit(rates, **options)

    def cache(
        self, ttl: float | timedelta | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Cache a GET route's responses: ``@bastion.cache(ttl=60, tags=["albums"])``.

        A decorator on the endpoint (above or below the route decorator); ``options`` are those
        of ``bastion.cache.cache`` (``stale_while_revalidate``, ``stale_if_error``, ``tags``,
        ``vary``, ``public``, ``max_entry_bytes``, ``coalesce``, ``invalidate_on``, ``etag``,
        ``store``). Served by bastion's response-cache layer, before the framework routes.
        """
        return cache_policy(ttl, **options)

    def invalidates(self, *tags: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """A write endpoint whose success purges ``tags``: ``@bastion.invalidates("albums")``."""
        return invalidates(*tags)

    async def cache_purge(self, *tags: str) -> None:
        """Invalidate every cached response (and ``@cached`` value) carrying one of ``tags``.

        Raises:
            StoreError: the cache backend could not be reached.
        """
        await self.cache_backend.purge(*tags)

    def timeout(self, timeout_s: float | timedelta, /) -> Any:
        """A FastAPI dependency giving a route a timeout: ``dependencies=[bastion.timeout(5)]``.

        It replaces ``BASTION_DEADLINE__DEFAULT_S`` and the settings' rules for that route; the
        handler is cancelled when it runs past it (504, see docs/shedding.md).
        """
        from bastion.protection import timeout  # loads FastAPI's dependency machinery: only here

        return timeout(timeout_s)

    def require(self, scopes: Iterable[str] = ()) -> Any:
        """A FastAPI dependency: ``dependencies=[bastion.require(scopes=["items:write"])]``.

        The route needs an authenticated caller (API key or JWT, checked by bastion's
        authenticator) holding every one of ``scopes``: 401 with ``WWW-Authenticate`` without
        valid credentials, 403 ``insufficient_scope`` without a scope. As a parameter default it
        hands the handler the ``Principal``. List it before ``bastion.limit(...)``.
        """
        from bastion.auth import require  # loads FastAPI's dependency machinery: only here

        return require(scopes, authenticator=self.authenticator)

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

    def _concurrency_gauges(self) -> Callable[[ConcurrencyLimiter], None]:
        """Gauges of the load shedder, summed over the workers, and the hook that updates them."""
        registry = self.metrics
        limit = registry.gauge(
            "bastion_concurrency_limit", "Concurrency limit of the load shedder."
        ).labels()
        in_flight = registry.gauge(
            "bastion_concurrency_in_flight", "Requests holding a load-shedding permit."
        ).labels()
        queued = registry.gauge(
            "bastion_concurrency_queued", "Requests waiting for a load-shedding permit."
        ).labels()

        def update(limiter: ConcurrencyLimiter) -> None:
            limit.set(limiter.limit)
            in_flight.set(limiter.in_flight)
            queued.set(limiter.queued)

        return update

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
        response_headers: tuple[tuple[bytes, bytes], ...] = ()
        security = self._guard_options.get("security_headers")
        if settings.guard.enabled and security is not None:
            # The guard's fixed security headers ride in the pipeline's own header copy; the
            # guard keeps only HSTS, which depends on the request (see GuardMiddleware).
            response_headers = security.encoded()[0]
        context = ContextBuilder(
            request_id_header=settings.context.request_id_header,
            trust_incoming_request_id=settings.context.trust_incoming_request_id,
            trusted_proxies=settings.context.trusted_proxies,
            forwarded_header=settings.context.forwarded_header,
            route_resolver=self.routes,
            clock=self.clock,
            response_headers=response_headers,
        )
        return {
            "startup": self.startup,
            "shutdown": self.shutdown,
            "context": context,
            "hooks": self.hooks,
            "ops_prefix": settings.ops.prefix if settings.ops.enabled else None,
            "ops_routes": self.ops,
            "coordinator": self.shutdown_coordinator,
            "observer": self.observability.telemetry if self._observed() else None,
        }

    def _observed(self) -> bool:
        """Whether telemetry has anything to do per request: with metrics, the access log and
        tracing all off, the pipeline skips calling it (two calls and a clock read saved)."""
        settings = self.settings
        return settings.metrics.enabled or settings.logging.access_log or settings.tracing.enabled

    def _cache_options(self) -> dict[str, Any]:
        """Options of the response-cache layer, keyed by the coding compression will choose."""
        settings = self.settings
        negotiator = None
        if settings.compression.enabled:
            from bastion.compression import available_encodings, negotiate

            configured = settings.compression.encodings
            encodings = tuple(configured) if configured else available_encodings()

            def negotiator(accept_encoding: bytes | None) -> str | None:
                return negotiate(accept_encoding, encodings)

        options = cache_options(
            settings.cache,
            backend=self.cache_backend,
            negotiate_encoding=negotiator,
            hooks=self.hooks,
            clock=self.clock,
        )
        # Refreshes of stale entries are part of what a graceful shutdown drains.
        options["spawn"] = self.shutdown_coordinator.spawn
        return options

    def _inner_layers(self) -> list[tuple[Callable[..., Any], dict[str, Any]]]:
        """The capability layers below the pipeline, innermost first (DESIGN §4, read upward)."""
        settings = self.settings
        layers: list[tuple[Callable[..., Any], dict[str, Any]]] = []
        if settings.compression.enabled:
            from bastion.compression import CompressionMiddleware, compression_options

            layers.append((CompressionMiddleware, compression_options(settings.compression)))
        if settings.cache.enabled:
            # Outside compression, so it stores each compressed variant once and a hit is not
            # compressed again; a factory, so an app that caches nothing pays nothing.
            layers.append((cache_layer, self._cache_options()))
        if settings.ratelimit.enabled:
            # A factory: the layer installs only when limits are configured or an endpoint
            # declared one with ``@bastion.rate_limit``; with none it would cost every request
            # and decide nothing (``bastion.limit`` dependencies work without it).
            layers.append((ratelimit_layer, self._ratelimit_options))
        if settings.auth.enabled:
            # Outside rate limiting, so limits key on the principal it sets.
            options = AuthMiddleware.options_from_settings(
                settings.auth, authenticator=self.authenticator
            )
            layers.append((AuthMiddleware, options))
        if settings.deadline.enabled:
            # A factory: it installs the layer only if a timeout is configured or a route
            # declares one (Starlette builds the stack after the routes are declared).
            layers.append((deadline_layer, self._deadline_options))
        if self._shedding_options is not None:
            layers.append((SheddingMiddleware, self._shedding_options))
        if settings.guard.enabled:
            layers.append((GuardMiddleware, self._guard_options))
        return layers

    def _install(self, app: ASGIApp) -> ASGIApp:
        options = self._pipeline_options()
        add_middleware = getattr(app, "add_middleware", None)
        if add_middleware is not None and hasattr(app, "exception_handlers"):
            from bastion.integrations.starlette import (
                app_error_responder,
                install_problem_handlers,
                leave_server_spans_to_bastion,
                replace_server_error_middleware,
            )
            from bastion.ratelimit import RateLimitRefused, rate_limit_problem

            install_problem_handlers(app)
            replace_server_error_middleware(app)
            if self.settings.tracing.enabled and leave_server_spans_to_bastion(app):
                logger.info(
                    "tracing: FastAPI's own request spans are off; bastion records the server "
                    "span of each request"
                )
            app.add_exception_handler(RateLimitRefused, rate_limit_problem)  # type: ignore[attr-defined]
            from bastion.auth import AuthRefused, auth_problem

            app.add_exception_handler(AuthRefused, auth_problem)  # type: ignore[attr-defined]
            # add_middleware puts each layer outside the ones added before it.
            for layer, layer_options in self._inner_layers():
                add_middleware(layer, **layer_options)
            add_middleware(PipelineMiddleware, **options, responder=app_error_responder(app))
            if hasattr(app, "state"):
                app.state.bastion = self
                app.state.bastion_ratelimiter = self.ratelimiter
                app.state.bastion_authenticator = self.authenticator
            return app
        for layer, layer_options in self._inner_layers():
            app = layer(app, **layer_options)
        return PipelineMiddleware(app, **options)
