"""``Bastion(app)`` on FastAPI, on plain Starlette and on any raw ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion import Bastion, Settings, current_context
from bastion.exceptions import LifespanError
from bastion.stores import MemoryStore
from bastion.testing import lifespan
from bastion.types import Receive, Scope, Send
from tests.asgi import client_for

pytestmark = pytest.mark.anyio


def settings(**overrides: Any) -> Settings:
    """Settings that ignore the developer's environment and .env."""
    return Settings(_env_file=None, **overrides)


class Album(BaseModel):
    """A response model for the FastAPI app."""

    id: int
    title: str


def fastapi_app() -> tuple[FastAPI, Bastion]:
    """A FastAPI app with a route of each kind the tests need, wrapped by Bastion."""
    app = FastAPI()
    bastion = Bastion(app, settings())

    @app.get("/albums/{album_id}")
    async def album(album_id: int) -> Album:
        if album_id == 404:
            raise HTTPException(404, detail="No such album.")
        if album_id == 401:
            raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"})
        return Album(id=album_id, title="Kind of Blue")

    @app.get("/context")
    async def context() -> dict[str, str | None]:
        current = current_context()
        return {"request_id": current.request_id, "route": current.route, "client": current.client}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/sync-context")
    def sync_context() -> dict[str, str | None]:
        return {"route": current_context().route}

    @app.post("/albums")
    async def create(album: Album) -> Album:
        return album

    return app, bastion


async def test_fastapi_success_carries_a_request_id() -> None:
    """A normal response gets an X-Request-ID and the app's body unchanged."""
    app, _ = fastapi_app()
    async with client_for(app) as client:
        response = await client.get("/albums/1")
    assert 200 == response.status_code
    assert {"id": 1, "title": "Kind of Blue"} == response.json()
    assert 32 == len(response.headers["x-request-id"])


async def test_fastapi_handlers_see_the_context_with_the_route_template() -> None:
    """current_context() works in async and sync (threadpool) handlers."""
    app, _ = fastapi_app()
    async with client_for(app) as client:
        response = await client.get("/context", headers={"X-Request-ID": "req-123"})
        sync = await client.get("/sync-context")
    assert {"request_id": "req-123", "route": "/context", "client": "127.0.0.1"} == response.json()
    assert {"route": "/sync-context"} == sync.json()


async def test_fastapi_http_exceptions_become_problems() -> None:
    """HTTPException keeps its status and headers and gets the problem shape and request id."""
    app, _ = fastapi_app()
    async with client_for(app) as client:
        missing = await client.get("/albums/404")
        unauthorized = await client.get("/albums/401")
        no_route = await client.get("/nowhere")
        wrong_method = await client.delete("/albums/1")
    assert "application/problem+json" == missing.headers["content-type"]
    assert {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "No such album.",
        "request_id": missing.headers["x-request-id"],
    } == missing.json()
    assert "Bearer" == unauthorized.headers["www-authenticate"]
    assert (404, "application/problem+json") == (
        no_route.status_code,
        no_route.headers["content-type"],
    )
    assert 405 == wrong_method.status_code
    assert "GET" in wrong_method.headers["allow"]


async def test_fastapi_validation_errors_become_422_problems_without_input() -> None:
    """Validation errors list what is wrong and do not echo the rejected input."""
    app, _ = fastapi_app()
    async with client_for(app) as client:
        response = await client.post("/albums", json={"id": "x", "title": "hunter2-secret"})
        bad_path = await client.get("/albums/not-a-number")
    assert 422 == response.status_code
    problem = response.json()
    assert "application/problem+json" == response.headers["content-type"]
    assert ["body", "id"] == problem["errors"][0]["loc"]
    assert "hunter2" not in response.text
    assert 422 == bad_path.status_code


async def test_fastapi_unhandled_errors_become_problem_500s() -> None:
    """An exception in a handler becomes a problem+json 500, never a traceback."""
    app, _ = fastapi_app()
    async with client_for(app) as client:
        response = await client.get("/boom")
    assert 500 == response.status_code
    assert response.headers["x-request-id"] == response.json()["request_id"]
    assert "kaboom" not in response.text


async def test_user_exception_handlers_are_kept() -> None:
    """A handler the app registered for HTTPException is not replaced."""
    app = FastAPI()

    async def mine(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"mine": True}, status_code=418)

    # FastAPI's docs register the Starlette class, which also covers the router's own 404s.
    app.add_exception_handler(StarletteHTTPException, mine)
    Bastion(app, settings())
    async with client_for(app) as client:
        response = await client.get("/nowhere")
    assert (418, {"mine": True}) == (response.status_code, response.json())


async def test_ops_endpoints_are_served_before_the_app() -> None:
    """Liveness and the ops index answer under the prefix, uncached, outside the OpenAPI."""
    app, _ = fastapi_app()
    async with client_for(app) as client:
        live = await client.get("/_bastion/health/live")
        index = await client.get("/_bastion")
        unknown = await client.get("/_bastion/nope")
        post = await client.post("/_bastion/health/live")
        openapi = await client.get("/openapi.json")
    assert ({"status": "pass", "health": "UP"}, "no-store") == (
        live.json(),
        live.headers["cache-control"],
    )
    assert "/_bastion/health/live" in index.json()["endpoints"]
    assert (404, "application/problem+json") == (
        unknown.status_code,
        unknown.headers["content-type"],
    )
    assert 405 == post.status_code
    assert not any(path.startswith("/_bastion") for path in openapi.json()["paths"])
    assert "x-request-id" in live.headers


async def test_ops_prefix_is_configurable_and_can_be_disabled() -> None:
    """BASTION_OPS__PREFIX moves the endpoints; BASTION_OPS__ENABLED=false removes them."""
    moved = FastAPI()
    Bastion(moved, settings(ops={"prefix": "/ops"}))
    off = FastAPI()
    Bastion(off, settings(ops={"enabled": False}))
    async with client_for(moved) as client:
        assert 200 == (await client.get("/ops/health/live")).status_code
    async with client_for(off) as client:
        assert 404 == (await client.get("/_bastion/health/live")).status_code


async def test_lifespan_opens_the_store_and_app_lifespan_runs_inside() -> None:
    """The app's own lifespan runs after bastion's resources opened and before they close."""
    log: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.append("app start")
        yield
        log.append("app stop")

    app = FastAPI(lifespan=app_lifespan)
    bastion = Bastion(app, settings())

    async def open_resource() -> None:
        log.append("resource open")

    async def close_resource() -> None:
        log.append("resource close")

    bastion.add_resource("example", open=open_resource, close=close_resource)
    async with lifespan(app) as state:
        assert state["bastion"] is bastion
        assert app.state.bastion is bastion
        await bastion.store.set("k", b"v")
        assert b"v" == await bastion.store.get("k")
    assert ["resource open", "app start", "app stop", "resource close"] == log


async def test_a_failing_resource_stops_startup_and_names_it() -> None:
    """A resource that cannot open fails the startup with its name and reason."""
    app = FastAPI()
    bastion = Bastion(app, settings())
    closed: list[str] = []

    async def first_close() -> None:
        closed.append("first")

    async def broken_open() -> None:
        raise ConnectionRefusedError("connection refused")

    bastion.add_resource("first", close=first_close)
    bastion.add_resource("search index", open=broken_open)
    with pytest.raises(LifespanError, match="could not open search index: connection refused"):
        async with lifespan(app):
            pass
    assert ["first"] == closed


async def test_plain_starlette_app() -> None:
    """Starlette apps get the same pipeline: context, problems, ops routes."""

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"route": current_context().route})

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("kaboom")

    app = Starlette(routes=[Route("/items/{item_id}", item), Route("/boom", boom)])
    Bastion(app, settings())
    async with client_for(app) as client:
        ok = await client.get("/items/3")
        missing = await client.get("/missing")
        failed = await client.get("/boom")
        live = await client.get("/_bastion/health/live")
    assert {"route": "/items/{item_id}"} == ok.json()
    assert "x-request-id" in ok.headers
    assert ("application/problem+json", 404) == (
        missing.headers["content-type"],
        missing.status_code,
    )
    assert missing.headers["x-request-id"] == missing.json()["request_id"]
    assert 500 == failed.status_code
    assert "kaboom" not in failed.text
    assert 200 == live.status_code


async def test_any_asgi_app_is_served_through_the_bastion_object() -> None:
    """An app without add_middleware is wrapped: serve the Bastion instance itself."""

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/boom":
            raise RuntimeError("kaboom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"raw"})

    bastion = Bastion(raw_app, settings())
    async with client_for(bastion) as client:
        ok = await client.get("/")
        failed = await client.get("/boom")
        live = await client.get("/_bastion/health/live")
    assert ("raw", True) == (ok.text, "x-request-id" in ok.headers)
    assert (500, "application/problem+json") == (failed.status_code, failed.headers["content-type"])
    assert 200 == live.status_code


async def test_memory_store_is_the_embedded_default() -> None:
    """Without BASTION_REDIS_URL, shared state lives in process memory."""
    _, bastion = fastapi_app()
    assert isinstance(bastion.store, MemoryStore)


async def test_structured_http_exception_details_are_kept() -> None:
    """A dict detail is returned under `details`; a bodiless status stays bodiless."""
    app = FastAPI()
    Bastion(app, settings())

    @app.get("/conflict")
    async def conflict() -> None:
        raise HTTPException(409, detail={"field": "name", "reason": "taken"})

    @app.get("/not-modified")
    async def not_modified() -> None:
        raise HTTPException(304)

    async with client_for(app) as client:
        conflicted = await client.get("/conflict")
        unchanged = await client.get("/not-modified")
    assert {"field": "name", "reason": "taken"} == conflicted.json()["details"]
    assert "Conflict" == conflicted.json()["title"]
    assert (304, b"") == (unchanged.status_code, unchanged.content)


@pytest.mark.redis
async def test_redis_url_moves_the_store_to_redis(redis_url: str) -> None:
    """With BASTION_REDIS_URL set, the store is Redis and is opened and closed by the lifespan."""
    from bastion.stores import RedisStore

    app = FastAPI()
    bastion = Bastion(app, settings(redis_url=redis_url, stores={"key_prefix": "bastion-app-test"}))
    assert isinstance(bastion.store, RedisStore)
    async with lifespan(app):
        await bastion.store.set("shared", b"yes", ttl_s=5)
        assert b"yes" == await bastion.store.get("shared")
        await bastion.store.delete("shared")


def closed_port_url() -> str:
    """A Redis URL on a port where nothing listens."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:hunter2@127.0.0.1:{port}/0"


async def test_unreachable_required_store_fails_startup_without_the_password() -> None:
    """A required store that does not answer stops the startup, naming it, password masked."""
    app = FastAPI()
    Bastion(app, settings(redis_url=closed_port_url(), stores={"required_at_startup": True}))
    with pytest.raises(LifespanError) as caught:
        async with lifespan(app):
            pass
    message = str(caught.value)
    assert "did not answer" in message
    assert "BASTION_STORES__REQUIRED_AT_STARTUP" in message
    assert "hunter2" not in message
    assert ":****@127.0.0.1" in message


async def test_unreachable_optional_store_starts_degraded(caplog: pytest.LogCaptureFixture) -> None:
    """By default the app starts without its store, says so, and keeps serving."""
    import logging

    app = FastAPI()
    Bastion(app, settings(redis_url=closed_port_url()))

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    with caplog.at_level(logging.WARNING, "bastion"):
        async with client_for(app) as client:
            response = await client.get("/ok")
    assert {"ok": True} == response.json()
    assert "starting degraded" in caplog.text
    assert "hunter2" not in caplog.text


async def test_ops_and_routes_under_a_root_path() -> None:
    """Behind a proxy that strips a prefix (root_path), ops and route templates still match."""
    app, _ = fastapi_app()
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            live = await client.get("/api/_bastion/health/live")
            context = await client.get("/api/context")
    assert 200 == live.status_code
    assert "/context" == context.json()["route"]


async def test_starlettes_server_error_layer_is_replaced_by_the_boundary() -> None:
    """Starlette's outer error layer is dropped (bastion's boundary always answers first), except
    in debug mode where it stays as it was."""
    from starlette.middleware.errors import ServerErrorMiddleware

    plain, _ = fastapi_app()
    debug = FastAPI(debug=True)
    Bastion(debug, settings())
    async with client_for(plain) as client:
        response = await client.get("/boom")
    assert 500 == response.status_code
    assert "application/problem+json" == response.headers["content-type"]
    assert not isinstance(plain.middleware_stack, ServerErrorMiddleware)
    async with client_for(debug):
        assert isinstance(debug.middleware_stack, ServerErrorMiddleware)


async def test_the_apps_own_500_handler_still_answers(caplog: pytest.LogCaptureFixture) -> None:
    """A handler registered for 500 or Exception answers unhandled errors; bastion still logs
    the error with its request id and publishes the event."""
    import logging

    from bastion.events import UnhandledError
    from bastion.testing import capture_events

    app = FastAPI()
    bastion = Bastion(app, settings())

    @app.exception_handler(Exception)
    async def my_500(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"mine": type(exc).__name__}, status_code=500)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    with capture_events(bastion.hooks, UnhandledError) as events, caplog.at_level(logging.ERROR):
        async with client_for(app) as client:
            response = await client.get("/boom")
    assert (500, {"mine": "RuntimeError"}) == (response.status_code, response.json())
    assert "x-request-id" in response.headers
    assert 1 == len(events)
    assert "kaboom" in caplog.text


async def test_health_groups_follow_the_lifespan_and_the_store() -> None:
    """startup turns UP once bastion's resources opened; a store outage makes ready DEGRADED (still
    200: features degrade, the instance stays in rotation); live never depends on it."""
    app = FastAPI()
    Bastion(app, settings(redis_url=closed_port_url(), health={"cache_s": 0}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        before = await client.get("/_bastion/health/startup")
        async with lifespan(app):
            started = await client.get("/_bastion/health/startup")
            ready = await client.get("/_bastion/health/ready")
            live = await client.get("/_bastion/health/live")
    assert 503 == before.status_code
    assert 200 == started.status_code
    assert (200, "DEGRADED") == (ready.status_code, ready.json()["health"])
    assert (200, "UP") == (live.status_code, live.json()["health"])


async def test_health_details_need_the_admin_key() -> None:
    """Per-check details are shown only with BASTION_OPS__ADMIN_KEY as a bearer token."""
    app = FastAPI()
    Bastion(app, settings(ops={"admin_key": "s3cret-admin"}))
    async with client_for(app) as client:
        anonymous = await client.get("/_bastion/health/ready")
        admin = await client.get(
            "/_bastion/health/ready", headers={"Authorization": "Bearer s3cret-admin"}
        )
    assert "checks" not in anonymous.json()
    assert "store" in admin.json()["checks"]


@pytest.mark.anyio
async def test_responses_are_compressed_inside_bastions_layers() -> None:
    """A large response is compressed for a client that accepts br; ops endpoints never are."""
    app = FastAPI()
    Bastion(app, settings(compression={"minimum_size": 100}))

    @app.get("/albums")
    async def albums() -> list[dict[str, object]]:
        """Enough JSON to be worth compressing."""
        return [{"id": number, "title": f"Album {number}"} for number in range(50)]

    async with client_for(app) as client:
        headers = {"Accept-Encoding": "br"}
        response = await client.get("/albums", headers=headers)
        ops = await client.get("/_bastion/metrics", headers=headers)

    assert "br" == response.headers["content-encoding"]
    assert response.headers["x-request-id"]
    assert 50 == len(response.json())  # httpx decodes br with the brotli package
    assert "content-encoding" not in ops.headers
