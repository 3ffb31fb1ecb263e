"""Route templates resolved from Starlette and FastAPI route tables before routing."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles

from bastion._routes import AppRouteResolver, StarletteRouteResolver


async def endpoint(request: object) -> PlainTextResponse:
    """A placeholder endpoint; the resolver never calls it."""
    return PlainTextResponse("")


def starlette_routes() -> list[object]:
    """A route table exercising every shape the resolver reads."""
    return [
        Route("/", endpoint),
        Route("/items/special", endpoint, methods=["POST"]),
        Route("/items/{item_id:int}", endpoint),
        Route("/items/{item_id}", endpoint, methods=["DELETE"]),
        Mount(
            "/api/{tenant}",
            routes=[
                Route("/users/{user_id}", endpoint),
                Mount("/v2", routes=[Route("/x", endpoint)]),
            ],
        ),
        Mount("/static", app=StaticFiles(directory=".", check_dir=False)),
        WebSocketRoute("/ws/{room}", endpoint),
        Host("api.example.com", app=Router([Route("/host-only", endpoint)])),
    ]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/", "/"),
        ("GET", "/items/42", "/items/{item_id:int}"),
        ("DELETE", "/items/abc", "/items/{item_id}"),
        # The first path match refuses GET; no later route takes it: the framework answers 405.
        ("GET", "/items/special", "/items/special"),
        ("POST", "/items/special", "/items/special"),
        # POST /items/42: the int and DELETE routes both refuse POST: 405, on the first.
        ("POST", "/items/42", "/items/{item_id:int}"),
        ("GET", "/api/acme/users/7", "/api/{tenant}/users/{user_id}"),
        ("GET", "/api/acme/v2/x", "/api/{tenant}/v2/x"),
        ("GET", "/static/css/site.css", "/static/{path:path}"),
        ("WS", "/ws/lobby", "/ws/{room}"),
        ("GET", "/nope", None),
        ("GET", "/host-only", None),
    ],
)
def test_starlette_templates(method: str, path: str, expected: str | None) -> None:
    """Each request resolves to the template of the route Starlette would pick."""
    resolver = StarletteRouteResolver(starlette_routes())
    assert expected == resolver.resolve(method, path)


def test_fastapi_routes_and_routers() -> None:
    """FastAPI routes, included routers and prefixes resolve to their full templates."""
    app = FastAPI()
    router = APIRouter(prefix="/albums")

    @router.get("/{album_id}")
    async def album(album_id: int) -> dict[str, int]:
        return {"id": album_id}

    @app.get("/artists/{artist_id}/albums")
    async def artist_albums(artist_id: int) -> list[int]:
        return []

    nested = APIRouter(prefix="/tracks")

    @nested.get("/{track_id}")
    async def track(track_id: int) -> dict[str, int]:
        return {"id": track_id}

    router.include_router(nested)
    app.include_router(router, prefix="/v1")
    app.include_router(router)
    resolver = AppRouteResolver(app)
    assert "/v1/albums/{album_id}" == resolver.resolve("GET", "/v1/albums/3")
    assert "/v1/albums/tracks/{track_id}" == resolver.resolve("GET", "/v1/albums/tracks/5")
    assert "/albums/{album_id}" == resolver.resolve("GET", "/albums/3")
    assert "/artists/{artist_id}/albums" == resolver.resolve("GET", "/artists/9/albums")
    assert "/docs" == resolver.resolve("GET", "/docs")
    assert resolver.resolve("GET", "/albums") is None


def test_memo_is_bounded() -> None:
    """Unbounded distinct paths do not grow the memo without limit."""
    resolver = StarletteRouteResolver([Route("/items/{item_id}", endpoint)])
    for index in range(10_000):
        assert "/items/{item_id}" == resolver.resolve("GET", f"/items/{index}")
    assert len(resolver._memo) <= 4096


def test_app_resolver_reads_routes_added_later() -> None:
    """Routes added after the resolver was made are seen after refresh()."""
    app = Starlette()
    resolver = AppRouteResolver(app)
    assert resolver.resolve("GET", "/late") is None
    app.add_route("/late", endpoint)
    resolver.refresh()
    assert "/late" == resolver.resolve("GET", "/late")


def test_app_without_routes_resolves_nothing() -> None:
    """An app bastion cannot read routes from resolves every path to None."""

    async def raw_app(scope: object, receive: object, send: object) -> None:
        return None

    assert AppRouteResolver(raw_app).resolve("GET", "/") is None
