"""The registry of benchmarked apps: every one serves the same ``GET /items/{item_id}?q=...``.

Each app is built by a module-level factory registered with ``@register``, so both modes build
them the same way: in-process mode calls the factory directly; HTTP mode runs
``uvicorn benchmarks.apps:build --factory`` with ``BENCH_APP=<name>`` in the environment.

Every factory imports what it needs itself, so an app whose library is missing fails alone, and
every factory returns a fresh app (no state shared between apps in one process).

To add a row: write a factory returning an ASGI app, decorate it with ``@register(...)``, and
give it a group (``foundation`` rows run by default; others with ``--group`` or ``--apps``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from fastapi import FastAPI
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from bastion.settings import Settings

__all__ = [
    "APPS",
    "APP_ENV_VAR",
    "AppSpec",
    "build",
    "item_payload",
    "register",
]

APP_ENV_VAR = "BENCH_APP"
"""Environment variable naming the app ``build()`` returns (HTTP mode)."""

AppFactory = Callable[[], "ASGIApp"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSpec:
    """A registered app: how to build it and how the report names it."""

    name: str
    """Identifier used on the command line, in ``BENCH_APP`` and in the JSON report."""
    title: str
    """Row label in the Markdown report."""
    description: str
    """What the app is made of (the factory's docstring)."""
    groups: tuple[str, ...]
    """Groups the app belongs to (``--group``); ``foundation`` is the default run."""
    factory: AppFactory
    """Builds a fresh instance of the app."""


APPS: dict[str, AppSpec] = {}
"""Every registered app, by name, in registration order (the report's row order)."""


def register(
    name: str, *, title: str, groups: tuple[str, ...] = ("foundation",)
) -> Callable[[AppFactory], AppFactory]:
    """Register the decorated factory as app ``name``; its docstring describes the app."""

    def decorate(factory: AppFactory) -> AppFactory:
        if name in APPS:
            raise ValueError(f"app {name!r} is registered twice")
        description = " ".join((factory.__doc__ or "").split()).replace("``", "`")
        APPS[name] = AppSpec(
            name=name, title=title, description=description, groups=groups, factory=factory
        )
        return factory

    return decorate


def build() -> ASGIApp:
    """The app named by ``$BENCH_APP``: ``uvicorn benchmarks.apps:build --factory``."""
    name = os.environ.get(APP_ENV_VAR)
    if name is None or name not in APPS:
        known = ", ".join(APPS)
        raise RuntimeError(f"set {APP_ENV_VAR} to one of: {known} (got {name!r})")
    return APPS[name].factory()


# -- the endpoint every app serves ----------------------------------------------------------------


def item_payload(item_id: int, q: str | None) -> dict[str, Any]:
    """The small JSON object every app returns for ``/items/{item_id}?q=...``."""
    return {"item_id": item_id, "q": q, "name": "Widget", "price": 9.99, "tags": ["tools", "small"]}


def _fastapi() -> FastAPI:
    """A FastAPI app with the endpoint written as the FastAPI tutorial writes it."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return item_payload(item_id, q)

    return app


# -- 1. raw ASGI: the floor -----------------------------------------------------------------------


def _json_body(content: Any) -> bytes:
    # Serialized exactly as Starlette's JSONResponse does, so the floor differs only in framework.
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _raw_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _raw_respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _raw_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if scope["method"] != "GET" or not path.startswith("/items/"):
        await _raw_respond(send, 404, b'{"detail":"Not Found"}')
        return
    try:
        item_id = int(path[len("/items/") :])
    except ValueError:
        await _raw_respond(send, 422, b'{"detail":"item_id must be an integer"}')
        return
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    await _raw_respond(send, 200, _json_body(item_payload(item_id, query.get("q"))))


@register("raw", title="raw ASGI (floor)")
def raw_asgi() -> ASGIApp:
    """A hand-written ASGI callable: matches the path by prefix, parses the query string with
    ``urllib.parse``, serializes with ``json`` as Starlette does. No framework."""
    return _raw_app


# -- 2. bare Starlette ----------------------------------------------------------------------------


@register("starlette", title="bare Starlette")
def bare_starlette() -> ASGIApp:
    """Starlette with one ``Route("/items/{item_id:int}")`` returning a ``JSONResponse``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def read_item(request: Request) -> Response:
        item_id: int = request.path_params["item_id"]
        return JSONResponse(item_payload(item_id, request.query_params.get("q")))

    return Starlette(routes=[Route("/items/{item_id:int}", read_item)])


# -- 3. bare FastAPI ------------------------------------------------------------------------------


@register(
    "fastapi",
    title="bare FastAPI",
    groups=(
        "foundation",
        "breakdown",
        "observability",
        "observability-breakdown",
        "ratelimit",
        "cache",
        "defaults",
    ),
)
def bare_fastapi() -> ASGIApp:
    """FastAPI with ``async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]``
    (path and query parameters validated, the return value validated and serialized)."""
    return _fastapi()


# -- 4. five no-op BaseHTTPMiddleware layers ------------------------------------------------------


@register("fastapi-5-basehttp", title="FastAPI + 5 no-op BaseHTTPMiddleware")
def fastapi_five_base_http_middleware() -> ASGIApp:
    """Bare FastAPI plus five ``BaseHTTPMiddleware`` subclasses whose ``dispatch`` only calls
    ``call_next``: the price of the middleware style most tutorials teach."""
    from starlette.middleware.base import BaseHTTPMiddleware

    class NoOpMiddleware(BaseHTTPMiddleware):
        async def dispatch(
            self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            return await call_next(request)

    app = _fastapi()
    for _ in range(5):
        app.add_middleware(NoOpMiddleware)
    return app


# -- 5. the stack users assemble today ------------------------------------------------------------

_access_logger: logging.Logger | None = None


def _access_log() -> logging.Logger:
    """The access logger, configured once per process: a real ``FileHandler`` on a temp file,
    with asgi-correlation-id's filter so each line carries the request id."""
    global _access_logger
    if _access_logger is not None:
        return _access_logger
    from asgi_correlation_id import CorrelationIdFilter

    descriptor, name = tempfile.mkstemp(prefix="bastion-bench-access-", suffix=".log")
    os.close(descriptor)
    handler = logging.FileHandler(name, encoding="utf-8")
    # The handler holds the file open; unlinked now, it still takes every write (the cost is
    # real) and disappears with the process, however that process ends.
    Path(name).unlink()
    handler.addFilter(CorrelationIdFilter(uuid_length=32))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s %(message)s")
    )
    logger = logging.getLogger("bench.access")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _access_logger = logger
    return logger


def _add_assembled_observability(app: FastAPI) -> None:
    """Add the observability users assemble today to ``app``, wired as their READMEs show.

    Around whatever ``app`` already has, from the inside out: an ``@app.middleware("http")``
    access log that times the request and writes one line through ``logging`` to a real file
    (``_access_log()``, with the correlation id); prometheus-fastapi-instrumentator
    (``Instrumentator().instrument(app).expose(app)``, on a fresh ``CollectorRegistry`` so several
    instances can live in one process); and asgi-correlation-id ``CorrelationIdMiddleware``,
    outermost, so every layer below (and the access log) sees the id.
    """
    from asgi_correlation_id import CorrelationIdMiddleware
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    access_log = _access_log()

    @app.middleware("http")
    async def log_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        elapsed_ms = (time.perf_counter() - started) * 1000
        client = request.client.host if request.client else "-"
        access_log.info(
            '%s "%s %s" %d %.2fms',
            client,
            request.method,
            request.url.path,
            response.status_code,
            elapsed_ms,
        )
        return response

    Instrumentator(registry=CollectorRegistry()).instrument(app).expose(app)
    # Added last, so outermost: every layer below (and the access log) sees the id.
    app.add_middleware(CorrelationIdMiddleware)


@register("assembled", title="FastAPI + assembled stack")
def fastapi_assembled_stack() -> ASGIApp:
    """Bare FastAPI plus what users assemble today, wired as their READMEs show:
    asgi-correlation-id ``CorrelationIdMiddleware``; prometheus-fastapi-instrumentator
    (``Instrumentator().instrument(app).expose(app)``, on a fresh ``CollectorRegistry`` so
    several instances can live in one process); slowapi (``Limiter(key_func=get_remote_address,
    default_limits=["1000000/minute"])``, never hit, with ``SlowAPIMiddleware``); Starlette
    ``GZipMiddleware``; and an ``@app.middleware("http")`` access log that times the request and
    writes one line through ``logging`` to a real file."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address
    from starlette.middleware.gzip import GZipMiddleware

    app = _fastapi()

    limiter = Limiter(key_func=get_remote_address, default_limits=["1000000/minute"])
    app.state.limiter = limiter
    # slowapi's README wiring; its handler is annotated for its own exception type only.
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIMiddleware)
    app.add_middleware(GZipMiddleware)
    _add_assembled_observability(app)
    return app


@register(
    "assembled-observability",
    title="FastAPI + assembled observability",
    groups=("observability",),
)
def fastapi_assembled_observability() -> ASGIApp:
    """The `assembled` row without slowapi and GZip: bare FastAPI plus asgi-correlation-id
    ``CorrelationIdMiddleware`` (outermost), prometheus-fastapi-instrumentator
    (``Instrumentator().instrument(app).expose(app)`` on a fresh ``CollectorRegistry``) and an
    ``@app.middleware("http")`` access log that times the request and writes one line with the
    correlation id through ``logging`` to a real file: request id, access log and metrics, as
    users assemble them today."""
    app = _fastapi()
    _add_assembled_observability(app)
    return app


# -- 6. bastion -----------------------------------------------------------------------------------


def _isolated_settings(**overrides: Any) -> Settings:
    """bastion's default ``Settings`` with ``overrides``, read from nothing: no environment, no
    ``.env``.

    A ``BASTION_*`` variable or a ``.env`` file in the working directory would otherwise change
    what is measured without the report saying so.
    """
    from bastion.settings import Settings as BastionSettings

    class DefaultSettings(BastionSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return DefaultSettings(**overrides)


def _log_file() -> Path:
    """A fresh log file path in a temp directory of its own, removed at process exit.

    The factory that calls it removes the directory as soon as bastion has opened the file (see
    ``fastapi_bastion``); the ``atexit`` hook covers a process that builds the app without
    starting it (``run.py`` builds every app once to report build errors).
    """
    directory = tempfile.mkdtemp(prefix="bastion-bench-log-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Path(directory) / "bastion.log"


def _bastion_app(**overrides: Any) -> FastAPI:
    from bastion import Bastion

    app = _fastapi()
    Bastion(app, settings=_isolated_settings(**_without_guard(overrides)))
    return app


def _without_guard(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` plus the abuse guard turned off (it is on by default).

    The foundation, observability and rate-limit rows measure what their budgets speak of; the
    guard is a capability of its own, measured with everything else in `bastion-defaults`.
    """
    from bastion.settings import GuardSettings

    return {"guard": GuardSettings(enabled=False), **overrides}


@register(
    "bastion-foundation",
    title="FastAPI + Bastion (foundation, no observability)",
    groups=("foundation", "breakdown", "observability-breakdown", "ratelimit"),
)
def fastapi_bastion_foundation() -> ASGIApp:
    """Bare FastAPI wrapped by ``Bastion(app, settings=...)`` with its default settings (memory
    store, settings from defaults only) but observability off: ``metrics.enabled=False``,
    ``logging.configure=False``, ``logging.access_log=False`` (tracing is off by default). What
    runs: lifespan, request context, error boundary, ops endpoints, fused into one
    ``PipelineMiddleware`` installed with ``add_middleware``; served as the FastAPI app itself."""
    from bastion.settings import CompressionSettings, LoggingSettings, MetricsSettings

    return _bastion_app(
        metrics=MetricsSettings(enabled=False),
        logging=LoggingSettings(configure=False, access_log=False),
        compression=CompressionSettings(enabled=False),
    )


@register(
    "bastion-metrics",
    title="FastAPI + Bastion (foundation + metrics, no access log)",
    groups=("observability-breakdown",),
)
def fastapi_bastion_metrics() -> ASGIApp:
    """The `bastion` observability row without its access log (``logging.access_log=False``;
    logging is still configured): foundation, Prometheus HTTP metrics, the event-loop lag
    monitor and the stats sampler. Against `bastion-foundation` and `bastion` it splits the
    observability stack's cost between metrics and the access log."""
    from bastion.settings import CompressionSettings, LoggingSettings

    return _bastion_app(
        logging=LoggingSettings(access_log=False),
        compression=CompressionSettings(enabled=False),
    )


@register(
    "bastion-ratelimit",
    title="FastAPI + Bastion (foundation + rate limit, memory)",
    groups=("ratelimit",),
)
def fastapi_bastion_ratelimit() -> ASGIApp:
    """The `bastion-foundation` row (observability and compression off, memory store, settings
    from defaults only) plus ``ratelimit={"rate": "1000000/minute"}``: bastion's
    ``RateLimitMiddleware`` inside its pipeline, on the in-process memory backend, deciding every
    request for its client and route (`sliding_window`, the default algorithm) and adding the
    ``RateLimit-Policy``/``RateLimit`` headers. The quota is never reached, so every request
    pays for a full admitted decision and none is refused."""
    from bastion.settings import CompressionSettings, LoggingSettings, MetricsSettings

    return _bastion_app(
        metrics=MetricsSettings(enabled=False),
        logging=LoggingSettings(configure=False, access_log=False),
        compression=CompressionSettings(enabled=False),
        ratelimit={"rate": "1000000/minute"},
    )


@register(
    "ratelimit-middleware",
    title="FastAPI + RateLimitMiddleware (memory)",
    groups=("ratelimit",),
)
def fastapi_ratelimit_middleware() -> ASGIApp:
    """Bare FastAPI plus bastion's `RateLimitMiddleware` alone, as DESIGN §2 says each
    capability can be used: ``app.add_middleware(RateLimitMiddleware, rate="1000000/minute")``,
    nothing else of bastion. Its default limiter is the in-process memory backend; with no request
    context, the middleware finds the route template itself (from the app's routes, memoized) and
    keys by the socket peer. Every request pays for a full admitted decision (`sliding_window`) and
    the ``RateLimit-Policy``/``RateLimit`` headers; the quota is never reached."""
    from bastion.ratelimit import RateLimitMiddleware

    app = _fastapi()
    app.add_middleware(RateLimitMiddleware, rate="1000000/minute")
    return app


@register(
    "bastion",
    title="FastAPI + Bastion (observability stack, log to a file)",
    groups=("foundation", "breakdown", "observability", "observability-breakdown"),
)
def fastapi_bastion() -> ASGIApp:
    """Bare FastAPI wrapped by ``Bastion(app, settings=...)`` with its default settings (memory
    store, settings from defaults only) except ``logging.file``, a temp file (unlinked once
    bastion has opened it; it still takes every write). What runs: the foundation (lifespan,
    request context with its request id, error boundary, ops endpoints, fused into one
    ``PipelineMiddleware``) plus the default observability stack: bastion's logging
    configuration with the JSON access log, one line per request, queued by the request and
    formatted and appended to the file by bastion's writer thread (nothing goes to stderr);
    Prometheus HTTP metrics (duration and body-size histograms, in-flight gauge, served at
    `/_bastion/metrics`); the event-loop lag monitor and the stats sampler. Tracing is off (the
    default): no span, no exporter. Compression and the abuse guard are off, so the row measures
    the observability stack the budget speaks of, not capabilities added later (the
    `bastion-defaults` row has everything)."""
    from bastion import Bastion
    from bastion.settings import CompressionSettings, LoggingSettings

    log_file = _log_file()
    app = _fastapi()
    bastion = Bastion(
        app,
        settings=_isolated_settings(
            **_without_guard(
                {
                    "logging": LoggingSettings(file=log_file),
                    "compression": CompressionSettings(enabled=False),
                }
            )
        ),
    )

    async def remove_log_file() -> None:
        # bastion opened the file when its observability resource opened, just before this one.
        # Unlinked, the file still takes every write (the cost is real) and vanishes with the
        # process, however it ends: a uvicorn server stopped with SIGTERM re-raises the signal
        # after its shutdown, so its atexit hooks never run.
        shutil.rmtree(log_file.parent, ignore_errors=True)

    bastion.add_resource("bench-log-file", open=remove_log_file)
    return app


@register(
    "bastion-defaults",
    title="FastAPI + Bastion (full default stack, log to a file)",
    groups=("defaults",),
)
def fastapi_bastion_defaults() -> ASGIApp:
    """``Bastion(app)`` with every default on (settings from defaults only, the JSON access log
    to a temp file as in the `bastion` row): the `bastion` row plus the abuse guard (path checks,
    the 10 MiB body limit, security headers, bans) and compression (the response is below its
    minimum size, so nothing is compressed; the layer still looks). Layers that install only
    when configured (rate limits, load shedding, deadlines, authentication, the response cache)
    are absent, as in a fresh app. DESIGN §9's full-default-stack budget."""
    from bastion import Bastion
    from bastion.settings import LoggingSettings

    log_file = _log_file()
    app = _fastapi()
    bastion = Bastion(app, settings=_isolated_settings(logging=LoggingSettings(file=log_file)))

    async def remove_log_file() -> None:
        shutil.rmtree(log_file.parent, ignore_errors=True)  # as in the `bastion` row

    bastion.add_resource("bench-log-file", open=remove_log_file)
    return app


# -- per-layer breakdown of bastion (``--group breakdown``) ---------------------------------------


def _standalone_layers(*, context: bool, boundary: bool, ops: bool) -> ASGIApp:
    """FastAPI with bastion's *standalone* middleware classes, one ``add_middleware`` each, in
    the canonical order: what a user composing them by hand pays, layer by layer."""
    from bastion._lifespan import LifespanMiddleware
    from bastion._ops import OpsMiddleware, OpsRoutes
    from bastion._routes import AppRouteResolver
    from bastion.context import RequestContextMiddleware
    from bastion.problem import ErrorBoundaryMiddleware

    app = _fastapi()

    async def nothing_to_open(scope: Scope) -> None:
        return None

    async def nothing_to_close() -> None:
        return None

    # add_middleware puts each new layer outside the previous ones: innermost first.
    if ops:
        app.add_middleware(OpsMiddleware, prefix="/_bastion", routes=OpsRoutes())
    if boundary:
        app.add_middleware(ErrorBoundaryMiddleware)
    if context:
        app.add_middleware(RequestContextMiddleware, route_resolver=AppRouteResolver(app))
    app.add_middleware(LifespanMiddleware, startup=nothing_to_open, shutdown=nothing_to_close)
    return app


@register("fastapi-1-asgi", title="FastAPI + 1 no-op pure ASGI layer", groups=("breakdown",))
def fastapi_one_asgi_layer() -> ASGIApp:
    """Bare FastAPI plus one pure ASGI middleware that only awaits the next app: the price of
    any one layer in Starlette's middleware stack."""

    class PassThrough:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)

    app = _fastapi()
    app.add_middleware(PassThrough)
    return app


@register(
    "fastapi-1-asgi-send",
    title="FastAPI + 1 no-op pure ASGI layer wrapping send",
    groups=("breakdown",),
)
def fastapi_one_asgi_send_layer() -> ASGIApp:
    """Bare FastAPI plus one pure ASGI middleware that wraps ``send`` in a closure, as every
    layer that adds a response header does."""

    class SendWrapper:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def wrapped(message: Message) -> None:
                await send(message)

            await self.app(scope, receive, wrapped)

    app = _fastapi()
    app.add_middleware(SendWrapper)
    return app


@register("layers-lifespan", title="standalone: lifespan", groups=("breakdown",))
def standalone_lifespan() -> ASGIApp:
    """FastAPI plus ``LifespanMiddleware`` alone."""
    return _standalone_layers(context=False, boundary=False, ops=False)


@register("layers-context", title="standalone: lifespan + context", groups=("breakdown",))
def standalone_context() -> ASGIApp:
    """FastAPI plus ``LifespanMiddleware`` and ``RequestContextMiddleware``."""
    return _standalone_layers(context=True, boundary=False, ops=False)


@register(
    "layers-all",
    title="standalone: lifespan + context + errors + ops",
    groups=("breakdown",),
)
def standalone_all() -> ASGIApp:
    """The same four layers Bastion installs, as four separate middleware: compare with the
    ``bastion-foundation`` row to see what fusing them into one ``PipelineMiddleware`` saves."""
    return _standalone_layers(context=True, boundary=True, ops=True)


# -- 8. response caches: every request after the first is a hit -----------------------------------


@register(
    "fastapi-cache2", title="FastAPI + fastapi-cache2 (InMemoryBackend), hit", groups=("cache",)
)
def fastapi_cache2_hit() -> ASGIApp:
    """FastAPI with fastapi-cache2's ``@cache(expire=60)`` on the endpoint and its
    ``InMemoryBackend``, initialised in the app's lifespan, as its README shows. Every measured
    request is a hit (the first one, the correctness check, stored the response)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.inmemory import InMemoryBackend
    from fastapi_cache.decorator import cache

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        FastAPICache.init(InMemoryBackend(), prefix="bench")
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}")
    @cache(expire=60)  # type: ignore[untyped-decorator,unused-ignore]  # untyped without the bench group
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return item_payload(item_id, q)

    return app


def _cached_fastapi() -> FastAPI:
    """The bare FastAPI endpoint, declared cacheable with bastion's ``@cache(ttl=60)``."""
    from fastapi import FastAPI

    from bastion.cache import cache

    app = FastAPI()

    @app.get("/items/{item_id}")
    @cache(ttl=60)
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return item_payload(item_id, q)

    return app


@register("cache-layer", title="FastAPI + bastion CacheMiddleware (memory), hit", groups=("cache",))
def fastapi_cache_layer_hit() -> ASGIApp:
    """bastion's response cache alone in front of FastAPI: ``app.add_middleware(CacheMiddleware)``
    (memory backend) and ``@cache(ttl=60)`` on the endpoint; no ``Bastion``, so the layer finds
    the route template itself. Every measured request is a hit, served before FastAPI routes."""
    from bastion.cache import CacheMiddleware

    app = _cached_fastapi()
    app.add_middleware(CacheMiddleware)
    return app


@register(
    "bastion-cache", title="FastAPI + Bastion, full default stack, cache hit", groups=("cache",)
)
def fastapi_bastion_cache_hit() -> ASGIApp:
    """``Bastion(app)`` with its full default stack (settings from defaults only: metrics, the JSON
    access log to a temp file, compression, the response cache on the memory store) and
    ``@bastion.cache(ttl=60)`` on the endpoint. Every measured request is a hit. Compared with
    bare, uncached FastAPI."""
    from bastion import Bastion
    from bastion.settings import LoggingSettings

    log_file = _log_file()
    app = _cached_fastapi()
    bastion = Bastion(app, settings=_isolated_settings(logging=LoggingSettings(file=log_file)))

    async def remove_log_file() -> None:
        shutil.rmtree(log_file.parent, ignore_errors=True)  # as in the `bastion` row

    bastion.add_resource("bench-log-file", open=remove_log_file)
    return app
