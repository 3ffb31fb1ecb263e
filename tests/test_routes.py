"""Route templates resolved from Starlette and FastAPI route tables before routing, and the
``[METHODS ]PATTERN`` rules matched against them."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles

from bastion._routes import (
    AppRouteResolver,
    RoutePattern,
    RouteTable,
    ScopeRoutes,
    StarletteRouteResolver,
    compile_patterns,
    memoize_route,
)
from bastion.exceptions import ConfigurationError
from tests.asgi import http_scope


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


@pytest.mark.parametrize(
    ("pattern", "method", "target", "expected"),
    [
        ("/reports/*", "GET", "/reports/{id}", True),
        ("/reports/*", "GET", "/report", False),
        ("GET,HEAD /items/{id}", "HEAD", "/items/{id}", True),
        ("GET,HEAD /items/{id}", "POST", "/items/{id}", False),
        ("*", "DELETE", "/anything/at/all", True),
        ("/a.b", "GET", "/aXb", False),
    ],
)
def test_a_pattern_matches_methods_and_wildcards(
    pattern: str, method: str, target: str, expected: bool
) -> None:
    """``*`` matches anything (slashes too), other characters are literal, methods filter."""
    assert expected == RoutePattern(pattern).matches(method, target)


@pytest.mark.parametrize("pattern", ["reports/*", "get /x", "GET; /x"])
def test_an_invalid_pattern_is_a_configuration_error(pattern: str) -> None:
    """Patterns must start with '/' (or be '*'); methods are capitals separated by commas."""
    with pytest.raises(ConfigurationError, match="invalid pattern"):
        RoutePattern(pattern)


def test_a_table_prefers_the_route_template_and_the_first_match() -> None:
    """The template is matched when known, else the path; the first matching rule wins."""
    table = RouteTable([("/items/{id}", 1), ("/items/*", 2)], 0)

    assert 1 == table.lookup("GET", "/items/{id}", "/items/7")
    assert 2 == table.lookup("GET", None, "/items/7")
    assert 0 == table.lookup("GET", None, "/other")


def test_a_pattern_matches_any_of_several_targets() -> None:
    """``matches_any``: the template or the raw path matching is enough; methods still filter."""
    pattern = RoutePattern("POST /items/{id}")

    assert pattern.matches_any("POST", ("/items/{id}", "/items/7"))
    assert pattern.matches_any("POST", ("/other", "/items/{id}"))
    assert not pattern.matches_any("GET", ("/items/{id}",))
    assert not pattern.matches_any("POST", ())


def test_compiled_patterns_name_the_setting_they_come_from() -> None:
    """An invalid pattern from settings is reported with its variable's name."""
    assert ("/a", "GET /b") == tuple(p.text for p in compile_patterns(["/a", "GET /b"]))
    with pytest.raises(ConfigurationError, match=r"^BASTION_X__EXCLUDE: invalid pattern 'docs'"):
        compile_patterns(["/a", "docs"], "BASTION_X__EXCLUDE")
    with pytest.raises(ConfigurationError, match=r"^invalid pattern 'docs'"):
        compile_patterns(["docs"])


def test_raw_paths_are_memoized_only_while_there_is_room() -> None:
    """Templates always are (a full memo is forgotten for them); raw paths only below the limit."""
    memo = {("GET", f"/p/{index}"): index for index in range(4096)}
    memoize_route(memo, ("GET", "/raw"), 1, template=False)
    assert ("GET", "/raw") not in memo
    memoize_route(memo, ("GET", "/items/{id}"), 2, template=True)
    assert {("GET", "/items/{id}"): 2} == memo
    memoize_route(memo, ("GET", "/raw"), 1, template=False)
    assert 1 == memo[("GET", "/raw")]


def test_scope_routes_use_the_given_resolver_or_the_app_in_the_scope() -> None:
    """Without a resolver the app in the scope is read, on the path without ``root_path``."""
    app = Starlette(routes=[Route("/items/{item_id}", endpoint)])
    scope = {**http_scope("/api/items/7"), "root_path": "/api", "app": app}

    assert "/items/{item_id}" == ScopeRoutes().resolve(scope, "GET")
    assert None is ScopeRoutes().resolve(http_scope("/items/7"), "GET")
    given = ScopeRoutes(StarletteRouteResolver([Route("/x/{id}", endpoint)]))
    assert "/x/{id}" == given.resolve(http_scope("/ignored"), "GET", "/x/1")
