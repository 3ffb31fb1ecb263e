"""OpenTelemetry tracing: one SERVER span per request, under bastion's own trace identity."""

from __future__ import annotations

import importlib.util
import logging
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, cast

import anyio
import httpx
import pytest
from fastapi import FastAPI, HTTPException
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from bastion._ops import OpsRoutes
from bastion._pipeline import PipelineMiddleware
from bastion._routes import AppRouteResolver
from bastion.context import ContextBuilder, RequestContext, current_context
from bastion.events import CacheHit, Hooks, RateLimited, StoreDown
from bastion.exceptions import MissingDependencyError
from bastion.observability import tracing as tracing_module
from bastion.observability.tracing import Tracing, build_tracer_provider, parse_tracestate, span
from bastion.settings import TracingSettings
from bastion.types import Scope
from tests.asgi import call, http_scope

pytestmark = pytest.mark.anyio

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"


@dataclass
class Traced:
    """A ``Tracing`` whose spans end up in memory."""

    tracing: Tracing
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    def spans(self) -> list[ReadableSpan]:
        """The finished spans, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def server_span(self) -> ReadableSpan:
        """The one SERVER span recorded."""
        servers = [s for s in self.spans() if s.kind is SpanKind.SERVER]
        assert 1 == len(servers)
        return servers[0]


@pytest.fixture(autouse=True)
def no_active_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts, and leaves others, with span() a no-op, even when it fails midway."""
    monkeypatch.setattr(tracing_module, "_tracer", None)


@pytest.fixture
async def make_traced() -> AsyncIterator[Callable[..., Traced]]:
    """Build ``Traced`` instances from ``TracingSettings`` fields; all closed after the test."""
    made: list[Traced] = []

    def make(**settings: Any) -> Traced:
        provider = build_tracer_provider(
            TracingSettings(exporter="none", **settings), service_name="albums"
        )
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        traced = Traced(Tracing(provider), exporter)
        made.append(traced)
        return traced

    yield make
    for traced in made:
        await traced.tracing.close()


@pytest.fixture
def traced(make_traced: Callable[..., Traced]) -> Traced:
    """Tracing with every new trace sampled."""
    return make_traced()


def pipeline(app: Any, tracing: Tracing, ops_prefix: str | None = None) -> PipelineMiddleware:
    """``app`` behind bastion's pipeline layer with ``tracing`` as its observer, as Bastion runs."""

    async def startup(scope: Scope) -> None:
        pass

    async def shutdown() -> None:
        pass

    return PipelineMiddleware(
        app,
        startup=startup,
        shutdown=shutdown,
        context=ContextBuilder(route_resolver=AppRouteResolver(app)),
        hooks=None,
        ops_prefix=ops_prefix,
        ops_routes=OpsRoutes(),
        observer=tracing,
    )


@asynccontextmanager
async def client_for(app: Any, tracing: Tracing) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``app`` behind the pipeline, from client address 203.0.113.7."""
    transport = httpx.ASGITransport(app=pipeline(app, tracing), client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://albums.test:8000") as client:
        yield client


def ids() -> dict[str, str]:
    """What bastion's request context says about the current request's trace."""
    context = current_context()
    return {
        "request_id": context.request_id,
        "trace_id": context.trace_id,
        "span_id": context.span_id,
        "traceparent": context.traceparent,
    }


def fastapi_app(tracing: Tracing) -> FastAPI:
    """A FastAPI app whose handlers answer with the context's ids and start child spans."""
    app = FastAPI()
    tracer = tracing.provider.get_tracer("tests")

    @app.get("/albums/{album_id}")
    async def album(album_id: int) -> dict[str, str]:
        with span("albums.load", album_id=album_id), tracer.start_as_current_span("db.query"):
            return ids()

    @app.get("/sync/{album_id}")
    def sync_album(album_id: int) -> dict[str, str]:
        with span("albums.load.sync", album_id=album_id):
            return ids()

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404, detail="No such album.")

    @app.get("/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({"detail": "later"}, status_code=503)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the database is on fire")

    return app


def starlette_app() -> Starlette:
    """A Starlette app with one route accepting any method."""

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items/{item_id}", item, methods=["GET", "PURGE"])])


def hex_span_id(value: int) -> str:
    """A span id as it appears in logs and headers."""
    return trace.format_span_id(value)


def hex_trace_id(value: int) -> str:
    """A trace id as it appears in logs and headers."""
    return trace.format_trace_id(value)


# ---------------------------------------------------------------------------- the server span


async def test_server_span_has_the_route_name_and_semconv_attributes(traced: Traced) -> None:
    """One SERVER span "GET /albums/{album_id}" with the stable HTTP attributes."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        response = await client.get("/albums/7?token=secret", headers={"user-agent": "curl/8.5"})
    assert 200 == response.status_code

    server = traced.server_span()
    assert "GET /albums/{album_id}" == server.name
    assert {
        "http.request.method": "GET",
        "url.path": "/albums/7",
        "url.scheme": "http",
        "http.route": "/albums/{album_id}",
        "client.address": "203.0.113.7",
        "server.address": "albums.test",
        "server.port": 8000,
        "user_agent.original": "curl/8.5",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    } == dict(server.attributes or {})
    assert StatusCode.UNSET == server.status.status_code
    assert "albums" == server.resource.attributes["service.name"]


async def test_span_name_is_the_method_alone_without_a_route(traced: Traced) -> None:
    """A path no route matches gives a span named by the method, and a 404 is no error."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        response = await client.get("/nowhere")
    assert 404 == response.status_code

    server = traced.server_span()
    assert "GET" == server.name
    assert "http.route" not in (server.attributes or {})
    assert 404 == (server.attributes or {})["http.response.status_code"]
    assert StatusCode.UNSET == server.status.status_code


async def test_unknown_methods_are_recorded_as_other(traced: Traced) -> None:
    """A method outside the semantic conventions' list cannot mint span names."""
    async with client_for(starlette_app(), traced.tracing) as client:
        response = await client.request("PURGE", "/items/3")
    assert 200 == response.status_code

    server = traced.server_span()
    assert "HTTP /items/{item_id}" == server.name
    assert "_OTHER" == (server.attributes or {})["http.request.method"]
    assert "PURGE" == (server.attributes or {})["http.request.method_original"]


async def test_server_span_on_a_starlette_app(traced: Traced) -> None:
    """A plain Starlette app gets the same span as a FastAPI one."""
    async with client_for(starlette_app(), traced.tracing) as client:
        await client.get("/items/3")

    server = traced.server_span()
    assert "GET /items/{item_id}" == server.name
    assert "/items/{item_id}" == (server.attributes or {})["http.route"]


async def test_attributes_a_request_does_not_have_are_left_out(traced: Traced) -> None:
    """On a unix socket without a User-Agent there is no server.* nor user_agent.original."""

    async def ok(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope("/ping", client=None)
    scope["server"] = ("/run/albums.sock", None)
    await call(pipeline(ok, traced.tracing), scope)

    assert {
        "http.request.method": "GET",
        "url.path": "/ping",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 204,
    } == dict(traced.server_span().attributes or {})


async def test_ops_endpoints_get_no_span(traced: Traced) -> None:
    """Probes and scrapes under the ops prefix are not traced."""
    app = pipeline(starlette_app(), traced.tracing, ops_prefix="/_bastion")

    response = await call(app, http_scope("/_bastion/health/live"))

    assert 404 == response.status  # no ops endpoint registered in this test
    assert [] == traced.spans()


# ---------------------------------------------------------------------------- trace identity


async def test_a_new_trace_has_the_request_id_as_trace_id(traced: Traced) -> None:
    """Without traceparent, span trace id == context.trace_id == the generated request id."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        response = await client.get("/albums/7")
    seen = response.json()

    server = traced.server_span()
    assert seen["request_id"] == seen["trace_id"] == response.headers["x-request-id"]
    assert seen["trace_id"] == hex_trace_id(server.context.trace_id)
    assert server.parent is None


async def test_context_span_id_and_traceparent_are_the_spans(traced: Traced) -> None:
    """Logs and outbound calls name the exported span: context.span_id is its id."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        seen = (await client.get("/albums/7")).json()

    server = traced.server_span()
    span_id = hex_span_id(server.context.span_id)
    trace_id = hex_trace_id(server.context.trace_id)
    assert span_id == seen["span_id"]
    assert f"00-{trace_id}-{span_id}-01" == seen["traceparent"]


async def test_an_incoming_traceparent_continues_the_trace(traced: Traced) -> None:
    """A valid traceparent gives the span its trace id and its remote parent."""
    headers = {"traceparent": f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"}
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        seen = (await client.get("/albums/7", headers=headers)).json()

    server = traced.server_span()
    assert INCOMING_TRACE == hex_trace_id(server.context.trace_id) == seen["trace_id"]
    assert server.parent is not None
    assert INCOMING_PARENT == hex_span_id(server.parent.span_id)
    assert server.parent.is_remote
    assert seen["request_id"] != seen["trace_id"]


async def test_an_invalid_traceparent_starts_a_new_trace(traced: Traced) -> None:
    """An upper-case (invalid) traceparent is ignored: new trace, no parent, no tracestate."""
    headers = {
        "traceparent": f"00-{INCOMING_TRACE.upper()}-{INCOMING_PARENT}-01",
        "tracestate": "vendor=value",
    }
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        seen = (await client.get("/albums/7", headers=headers)).json()

    server = traced.server_span()
    assert INCOMING_TRACE != seen["trace_id"]
    assert seen["trace_id"] == hex_trace_id(server.context.trace_id)
    assert server.parent is None
    assert {} == dict(server.context.trace_state)


async def test_tracestate_is_carried_onto_the_trace(traced: Traced) -> None:
    """The caller's tracestate, from every tracestate header, stays with the trace."""
    headers = [
        ("traceparent", f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("tracestate", "rojo=00f067aa0ba902b7"),
    ]
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        await client.get("/albums/7", headers=headers)

    server = traced.server_span()
    expected = {"congo": "t61rcWkgMzE", "rojo": "00f067aa0ba902b7"}
    assert server.parent is not None
    assert expected == dict(server.parent.trace_state)
    assert expected == dict(server.context.trace_state)


async def test_an_invalid_tracestate_is_dropped_without_logging_it(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed tracestate is dropped whole, and no log line quotes the client's text."""
    headers = [
        ("traceparent", f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
        ("tracestate", "congo=t61rcWkgMzE,INJECTED LOG LINE=1"),
    ]
    with caplog.at_level(logging.DEBUG):
        async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
            await client.get("/albums/7", headers=headers)

    server = traced.server_span()
    assert server.parent is not None
    assert {} == dict(server.parent.trace_state)
    assert "INJECTED" not in caplog.text


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([b"a=1, b=2"], [("a", "1"), ("b", "2")]),
        ([b"tenant@vendor=x", b"c=3"], [("tenant@vendor", "x"), ("c", "3")]),
        ([b"a=1,,b=2 "], [("a", "1"), ("b", "2")]),
        ([b"A=1"], None),  # keys are lower-case
        ([b"a=1,a=2"], None),  # duplicate keys
        ([b"a=x y "], [("a", "x y")]),  # inner spaces are allowed, trailing ones are trimmed
        ([b"a=1,b"], None),
        ([b",".join(b"k%d=v" % number for number in range(33))], None),  # over 32 members
    ],
)
def test_tracestate_members_are_parsed_strictly(
    headers: list[bytes], expected: list[tuple[str, str]] | None
) -> None:
    """W3C tracestate: lower-case keys, tenant@system keys, no duplicates, at most 32."""
    assert expected == parse_tracestate(headers)


async def test_a_span_already_current_does_not_adopt_the_request(traced: Traced) -> None:
    """Without traceparent the server span is a root, whatever span is current around it."""
    with traced.tracing.tracer.start_as_current_span("outer"):
        async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
            seen = (await client.get("/albums/7")).json()

    server = traced.server_span()
    assert server.parent is None
    assert seen["trace_id"] == hex_trace_id(server.context.trace_id)


async def test_other_root_spans_keep_random_ids(traced: Traced) -> None:
    """Only the server span takes bastion's ids: a span started outside a request does not."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        seen = (await client.get("/albums/7")).json()
    with traced.tracing.tracer.start_as_current_span("nightly-job") as job:
        pass

    assert seen["trace_id"] != hex_trace_id(job.get_span_context().trace_id)
    assert seen["span_id"] != hex_span_id(job.get_span_context().span_id)


# ---------------------------------------------------------------------------- sampling


async def test_an_unsampled_caller_is_honoured(make_traced: Callable[..., Traced]) -> None:
    """Incoming flags 00: nothing is recorded, and outbound calls say 00 as well."""
    traced = make_traced(sample_ratio=1.0)
    headers = {"traceparent": f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-00"}
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        seen = (await client.get("/albums/7", headers=headers)).json()

    assert [] == traced.spans()
    assert seen["traceparent"].startswith(f"00-{INCOMING_TRACE}-")
    assert seen["traceparent"].endswith("-00")


async def test_a_sampled_caller_is_honoured_whatever_the_ratio(
    make_traced: Callable[..., Traced],
) -> None:
    """Incoming flags 01 record the trace even when new traces are never sampled."""
    traced = make_traced(sample_ratio=0.0)
    headers = {"traceparent": f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"}
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        await client.get("/albums/7", headers=headers)

    assert INCOMING_TRACE == hex_trace_id(traced.server_span().context.trace_id)


async def test_an_unsampled_new_trace_propagates_the_decision(
    make_traced: Callable[..., Traced],
) -> None:
    """Ratio 0: no span, and the outbound traceparent carries flags 00, same ids as logged."""
    traced = make_traced(sample_ratio=0.0)
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        seen = (await client.get("/albums/7")).json()

    assert [] == traced.spans()
    assert f"00-{seen['trace_id']}-{seen['span_id']}-00" == seen["traceparent"]


# ---------------------------------------------------------------------------- outcome


async def test_a_5xx_response_is_an_error(traced: Traced) -> None:
    """A 503 marks the span ERROR with error.type "503"."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        response = await client.get("/unavailable")
    assert 503 == response.status_code

    server = traced.server_span()
    assert StatusCode.ERROR == server.status.status_code
    assert 503 == (server.attributes or {})["http.response.status_code"]
    assert "503" == (server.attributes or {})["error.type"]


async def test_a_4xx_response_is_not_an_error(traced: Traced) -> None:
    """An HTTPException(404) leaves the server span's status unset."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        response = await client.get("/missing")
    assert 404 == response.status_code

    server = traced.server_span()
    assert StatusCode.UNSET == server.status.status_code
    assert "error.type" not in (server.attributes or {})


async def test_an_exception_is_recorded_as_an_error(traced: Traced) -> None:
    """An exception the app raised: ERROR, an exception event, error.type; the client gets 500."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        response = await client.get("/boom")
    assert 500 == response.status_code

    server = traced.server_span()
    assert StatusCode.ERROR == server.status.status_code
    assert "RuntimeError" == server.status.description
    assert "RuntimeError" == (server.attributes or {})["error.type"]
    assert 500 == (server.attributes or {})["http.response.status_code"]
    events = [event for event in server.events if event.name == "exception"]
    assert 1 == len(events)
    assert "the database is on fire" == (events[0].attributes or {})["exception.message"]


async def test_a_cancelled_request_is_marked_not_failed(traced: Traced) -> None:
    """Cancellation ends the span with bastion.request.cancelled and no error status."""
    started = anyio.Event()

    async def hang(scope: Scope, receive: Any, send: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    app = pipeline(hang, traced.tracing)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, app, http_scope("/hang"))
        await started.wait()
        tasks.cancel_scope.cancel()

    server = traced.server_span()
    assert "GET" == server.name
    assert True is (server.attributes or {})["bastion.request.cancelled"]
    assert "http.response.status_code" not in (server.attributes or {})
    assert StatusCode.UNSET == server.status.status_code
    assert [] == [event for event in server.events if event.name == "exception"]


async def test_the_previous_otel_context_is_restored(traced: Traced) -> None:
    """After the request, the server span is no longer current."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        await client.get("/albums/7")

    assert not trace.get_current_span().get_span_context().is_valid


async def test_tracing_never_raises_into_the_request(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    """A context it cannot use is logged and the request goes on without a span."""
    context = RequestContext("r-1", "not-a-trace-id", "GET", "/albums/7")

    state = traced.tracing.request_started(context, http_scope("/albums/7"))
    traced.tracing.request_finished(context, http_scope("/albums/7"), state, None)

    assert state is None
    assert [] == traced.spans()
    assert ["bastion.tracing"] == [record.name for record in caplog.records]


# ---------------------------------------------------------------------------- child spans


async def test_child_spans_nest_under_the_server_span(traced: Traced) -> None:
    """span() and any tracer of the provider start children of the request's span."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        await client.get("/albums/7")

    by_name = {s.name: s for s in traced.spans()}
    server, load, query = (
        by_name["GET /albums/{album_id}"],
        by_name["albums.load"],
        by_name["db.query"],
    )
    assert load.parent is not None
    assert query.parent is not None
    assert server.context.span_id == load.parent.span_id
    assert load.context.span_id == query.parent.span_id
    assert {server.context.trace_id} == {load.context.trace_id, query.context.trace_id}
    assert SpanKind.INTERNAL == load.kind
    assert {"album_id": 7} == dict(load.attributes or {})


async def test_child_spans_nest_in_sync_handlers(traced: Traced) -> None:
    """A sync handler runs in a worker thread, and its spans still nest."""
    async with client_for(fastapi_app(traced.tracing), traced.tracing) as client:
        await client.get("/sync/7")

    by_name = {s.name: s for s in traced.spans()}
    child = by_name["albums.load.sync"]
    assert child.parent is not None
    assert by_name["GET /sync/{album_id}"].context.span_id == child.parent.span_id


async def test_span_records_an_exception_raised_inside(traced: Traced) -> None:
    """An exception leaving span() marks that span ERROR, with an exception event."""
    with pytest.raises(LookupError), span("cache.lookup"):
        raise LookupError("no such key")

    (recorded,) = traced.spans()
    assert StatusCode.ERROR == recorded.status.status_code
    assert ["exception"] == [event.name for event in recorded.events]


def test_span_is_a_no_op_without_tracing() -> None:
    """With no Tracing active, span() yields None."""
    with span("cache.lookup", hit=True) as nothing:
        assert nothing is None


async def test_closing_turns_span_back_into_a_no_op(
    make_traced: Callable[..., Traced],
) -> None:
    """After close(), span() no longer reaches the shut-down provider."""
    traced = make_traced()
    await traced.tracing.close()
    await traced.tracing.close()  # idempotent

    with span("cache.lookup") as nothing:
        assert nothing is None


# ---------------------------------------------------------------------------- providers


def test_the_global_provider_is_set_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """set_global=True makes the provider OpenTelemetry's global one; the default leaves it."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    settings = TracingSettings(exporter="none")

    private = Tracing(build_tracer_provider(settings, service_name="albums"))
    assert private.provider is not trace.get_tracer_provider()
    assert not trace.get_tracer("app").start_span("unrecorded").is_recording()

    public = Tracing(build_tracer_provider(settings, service_name="albums"), set_global=True)
    assert public.provider is trace.get_tracer_provider()
    for tracing in (private, public):
        tracing.provider.shutdown()


def test_service_name_wins_and_other_resource_attributes_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SERVICE_NAME yields to bastion's service name; OTEL_RESOURCE_ATTRIBUTES still apply."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")

    provider = build_tracer_provider(TracingSettings(exporter="none"), service_name="albums")

    attributes = provider.resource.attributes
    assert "albums" == attributes["service.name"]
    assert "staging" == attributes["deployment.environment.name"]
    provider.shutdown()


async def test_the_console_exporter_writes_spans_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """exporter="console" prints each span as JSON once flushed."""
    provider = build_tracer_provider(TracingSettings(exporter="console"), service_name="albums")
    tracing = Tracing(provider)
    async with client_for(fastapi_app(tracing), tracing) as client:
        await client.get("/albums/7")
    await tracing.close()

    printed = capsys.readouterr().out
    assert '"name": "GET /albums/{album_id}"' in printed
    assert '"service.name": "albums"' in printed


@dataclass
class Received:
    """One request the fake collector received."""

    path: str
    headers: dict[str, str]
    body: bytes


class CollectorServer(HTTPServer):
    """An OTLP/HTTP collector stand-in that keeps what it is sent."""

    received: list[Received]


class CollectorHandler(BaseHTTPRequestHandler):
    """Accepts every POST with an empty (valid) ExportTraceServiceResponse."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        server = cast("CollectorServer", self.server)
        server.received.append(Received(self.path, dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


@pytest.fixture
def collector() -> Iterator[CollectorServer]:
    """A fake OTLP/HTTP collector on a free 127.0.0.1 port, in a thread."""
    server = CollectorServer(("127.0.0.1", 0), CollectorHandler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_otlp_export_reaches_the_collector(
    collector: CollectorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans are POSTed as OTLP protobuf, with OTEL_EXPORTER_OTLP_HEADERS, once close() flushes."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=s3cret")
    host, port = collector.server_address[:2]
    endpoint = f"http://{host!s}:{port}/v1/traces"
    settings = TracingSettings(exporter="otlp", otlp_endpoint=endpoint)
    tracing = Tracing(build_tracer_provider(settings, service_name="albums"))
    async with client_for(fastapi_app(tracing), tracing) as client:
        seen = (await client.get("/albums/7")).json()
    await tracing.close()

    assert ["/v1/traces"] == [received.path for received in collector.received]
    request = ExportTraceServiceRequest()
    request.ParseFromString(collector.received[0].body)
    assert "s3cret" == collector.received[0].headers["x-collector-key"]
    resource_spans = request.resource_spans[0]
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert "albums" == service["service.name"]
    exported = {s.name: s for scope in resource_spans.scope_spans for s in scope.spans}
    server = exported["GET /albums/{album_id}"]
    assert seen["trace_id"] == server.trace_id.hex()
    assert seen["span_id"] == server.span_id.hex()
    assert server.span_id == exported["albums.load"].parent_span_id


async def test_close_with_the_collector_down_drops_spans_without_raising(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable collector costs the spans, never the shutdown; the exporter logs it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = TracingSettings(exporter="otlp", otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces")
    tracing = Tracing(build_tracer_provider(settings, service_name="albums"))
    async with client_for(fastapi_app(tracing), tracing) as client:
        response = await client.get("/albums/7")
    assert 200 == response.status_code

    await tracing.close()

    assert any("Failed to export" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------- without the extra


def test_without_opentelemetry_import_works_and_use_says_which_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The module imports without OpenTelemetry; building anything raises for bastion[otel]."""
    for name in [*sys.modules, "opentelemetry"]:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location(
        "bastion_tracing_without_otel", tracing_module.__file__
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    with pytest.raises(MissingDependencyError, match=r"pip install 'bastion\[otel\]'") as info:
        module.build_tracer_provider(TracingSettings(), service_name="albums")
    assert "otel" == info.value.extra
    with pytest.raises(MissingDependencyError, match=r"bastion\[otel\]"):
        module.Tracing(cast("Any", object()))
    with module.span("cache.lookup") as nothing:
        assert nothing is None


# ------------------------------------------------------------------- bastion's decisions


def deciding_app(hooks: Hooks) -> FastAPI:
    """A FastAPI app whose handler publishes two decisions, as bastion's layers do."""
    app = FastAPI()

    @app.get("/albums/{album_id}")
    async def album(album_id: int) -> dict[str, int]:
        hooks.publish(CacheHit(route="/albums/{album_id}", method="GET", age_s=3.5))
        hooks.publish(
            RateLimited(
                policies=("default", "global"),
                method="GET",
                route="/albums/{album_id}",
                principal=None,
                partition="0123456789abcdef",
                retry_after_s=2.0,
                cost=1,
            )
        )
        return {"album_id": album_id}

    return app


async def test_decisions_are_events_on_the_request_span(traced: Traced) -> None:
    """Each event published while a request is traced becomes a span event named
    bastion.<event>, its fields as bastion.* attributes (None fields left out)."""
    hooks = Hooks()
    traced.tracing.follow_events(hooks)
    async with client_for(deciding_app(hooks), traced.tracing) as client:
        await client.get("/albums/7")

    events = {event.name: dict(event.attributes or {}) for event in traced.server_span().events}
    assert {
        "bastion.cache_hit": {
            "bastion.route": "/albums/{album_id}",
            "bastion.method": "GET",
            "bastion.age_s": 3.5,
        },
        "bastion.rate_limited": {
            "bastion.policies": ("default", "global"),
            "bastion.method": "GET",
            "bastion.route": "/albums/{album_id}",
            "bastion.partition": "0123456789abcdef",
            "bastion.retry_after_s": 2.0,
            "bastion.cost": 1,
        },
    } == events


async def test_decisions_outside_a_request_or_after_close_are_not_recorded(
    traced: Traced,
) -> None:
    """An event with no recording span current (a background probe's) is skipped; once the
    tracing is closed, it no longer listens at all."""
    hooks = Hooks()
    traced.tracing.follow_events(hooks)
    hooks.publish(StoreDown(store="redis", error="refused", retry_in_s=1.0))  # no span: skipped
    listening = hooks.wants(StoreDown)
    await traced.tracing.close()
    assert (True, False, []) == (listening, hooks.wants(StoreDown), traced.spans())


async def test_bastion_records_a_rate_limit_refusal_on_the_request_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under Bastion with tracing on, each request has one SERVER span (FastAPI's native request
    spans are off) and the 429's carries bastion.rate_limited."""
    # Bastion installs its provider as the global one: undone after the test.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    from bastion import Bastion, Settings
    from tests.asgi import client_for as bastion_client

    app = FastAPI()
    settings = Settings(
        _env_file=None,
        logging={"configure": False},
        tracing={"enabled": True, "exporter": "none"},
    )
    bastion = Bastion(app, settings)

    @app.get("/albums/{album_id}", dependencies=[bastion.limit("1/minute")])
    async def album(album_id: int) -> dict[str, int]:
        return {"album_id": album_id}

    exporter = InMemorySpanExporter()
    async with bastion_client(app) as client:
        tracing = bastion.observability.tracing
        assert isinstance(tracing, Tracing)
        tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
        statuses = [(await client.get("/albums/7")).status_code for _ in range(2)]

    # One SERVER span per request: FastAPI's own request spans were switched off.
    admitted, refused = exporter.get_finished_spans()
    assert (SpanKind.SERVER, SpanKind.SERVER) == (admitted.kind, refused.kind)
    assert [200, 429] == statuses
    assert ([], ["bastion.rate_limited"]) == (
        [event.name for event in admitted.events],
        [event.name for event in refused.events],
    )
    assert "/albums/{album_id}" == dict(refused.events[0].attributes or {})["bastion.route"]
