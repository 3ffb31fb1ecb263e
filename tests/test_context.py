"""The request context: ids, trace context, client address, route template, ContextVar."""

from __future__ import annotations

import re

import pytest

from bastion.context import (
    SCOPE_KEY,
    ContextBuilder,
    RequestContext,
    RequestContextMiddleware,
    current_context,
    get_context,
    parse_traceparent,
)
from bastion.exceptions import ConfigurationError
from bastion.types import Receive, Scope, Send
from tests.asgi import call, http_scope

pytestmark = pytest.mark.anyio

HEX32 = re.compile(r"[0-9a-f]{32}")


def recording_app(seen: list[RequestContext]) -> object:
    """An app that records the context it sees through both access paths and answers 204."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        context = current_context()
        assert context is get_context(scope)
        seen.append(context)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_generates_a_request_id_and_echoes_it() -> None:
    """Without an incoming id, a fresh 32-hex id is made, echoed, and doubles as the trace id."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen))  # type: ignore[arg-type]
    response = await call(app, http_scope("/x"))
    context = seen[0]
    assert HEX32.fullmatch(context.request_id)
    assert context.request_id == response.headers["x-request-id"]
    assert context.request_id == context.trace_id


async def test_honours_a_valid_incoming_request_id() -> None:
    """A well-formed incoming X-Request-ID is kept and echoed unchanged."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen))  # type: ignore[arg-type]
    incoming = "2b7e1f0c-6a55-4b8e-9b0a-35f4d1c0a9e1"
    response = await call(app, http_scope(headers=[(b"x-request-id", incoming.encode())]))
    assert incoming == seen[0].request_id
    assert incoming == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "bad",
    [b"", b"a" * 129, b"line\r\nInjected: yes", b"has space", b"\xff\xfe", b"<script>"],
)
async def test_replaces_an_invalid_incoming_request_id(bad: bytes) -> None:
    """Ids that are empty, too long or could inject log lines or headers are replaced."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen))  # type: ignore[arg-type]
    response = await call(app, http_scope(headers=[(b"x-request-id", bad)]))
    assert HEX32.fullmatch(seen[0].request_id)
    assert seen[0].request_id == response.headers["x-request-id"]


async def test_can_refuse_incoming_ids() -> None:
    """With trust_incoming_request_id=False every request gets its own id."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen), trust_incoming_request_id=False)  # type: ignore[arg-type]
    await call(app, http_scope(headers=[(b"x-request-id", b"abc")]))
    assert "abc" != seen[0].request_id


async def test_keeps_an_id_the_app_already_set() -> None:
    """If the app sets the header itself, the middleware does not add a second one."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"x-request-id", b"from-app")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    response = await call(RequestContextMiddleware(app), http_scope())
    assert [("x-request-id", "from-app")] == [
        h for h in response.header_list if h[0] == "x-request-id"
    ]


async def test_custom_request_id_header() -> None:
    """The header name is configurable, for both reading and echoing."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen), request_id_header="X-Correlation-ID")  # type: ignore[arg-type]
    response = await call(app, http_scope(headers=[(b"x-correlation-id", b"corr-1")]))
    assert "corr-1" == seen[0].request_id
    assert "corr-1" == response.headers["x-correlation-id"]


async def test_traceparent_continues_the_callers_trace() -> None:
    """A valid traceparent sets the trace id, parent span and flags; our span id is new."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen))  # type: ignore[arg-type]
    header = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    await call(app, http_scope(headers=[(b"traceparent", header)]))
    context = seen[0]
    assert "0af7651916cd43dd8448eb211c80319c" == context.trace_id
    assert "b7ad6b7169203331" == context.parent_span_id
    assert 0 == context.trace_flags
    assert context.span_id != context.parent_span_id
    assert f"00-{context.trace_id}-{context.span_id}-00" == context.traceparent


@pytest.mark.parametrize(
    "value",
    [
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # v00 with extra
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # short span
        b"garbage",
    ],
)
def test_invalid_traceparent_restarts_the_trace(value: bytes) -> None:
    """Malformed trace context is ignored, as W3C Trace Context requires."""
    assert parse_traceparent(value) is None


def test_future_traceparent_versions_are_accepted() -> None:
    """A higher version with extra fields is parsed for the fields we know."""
    parsed = parse_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz")
    assert ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1) == parsed


async def test_client_is_the_socket_peer_by_default() -> None:
    """X-Forwarded-For from an untrusted peer never changes the client address."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen))  # type: ignore[arg-type]
    scope = http_scope(headers=[(b"x-forwarded-for", b"1.2.3.4")], client=("203.0.113.9", 1234))
    await call(app, scope)
    assert "203.0.113.9" == seen[0].client


async def test_trusted_proxy_chain_is_walked_from_the_right() -> None:
    """Behind trusted proxies, the client is the first untrusted hop from the right."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(
        recording_app(seen),  # type: ignore[arg-type]
        trusted_proxies=["10.0.0.0/8"],
    )
    # The client spoofed "6.6.6.6"; the edge proxy appended the real address, 198.51.100.7.
    headers = [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.7, 10.1.2.3")]
    await call(app, http_scope(headers=headers, client=("10.0.0.2", 1)))
    assert "198.51.100.7" == seen[0].client


async def test_a_chain_split_over_several_header_lines_is_read_whole() -> None:
    """Proxies may add a line instead of appending: the lines join in order (RFC 9110 §5.3)."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(
        recording_app(seen),  # type: ignore[arg-type]
        trusted_proxies=["10.0.0.0/8"],
    )
    headers = [
        (b"x-forwarded-for", b"6.6.6.6, 198.51.100.7"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.1.2.3"),
    ]
    await call(app, http_scope(headers=headers, client=("10.0.0.2", 1)))
    assert "198.51.100.7" == seen[0].client


async def test_untrusted_peer_with_trusted_proxies_configured() -> None:
    """Configuring proxies does not make every peer's header believed."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen), trusted_proxies=["10.0.0.0/8"])  # type: ignore[arg-type]
    await call(app, http_scope(headers=[(b"x-forwarded-for", b"1.2.3.4")], client=("8.8.8.8", 1)))
    assert "8.8.8.8" == seen[0].client


async def test_malformed_forwarded_hop_falls_back_to_the_peer() -> None:
    """A garbage hop in the chain is not turned into a client address."""
    seen: list[RequestContext] = []
    app = RequestContextMiddleware(recording_app(seen), trusted_proxies=["10.0.0.0/8"])  # type: ignore[arg-type]
    await call(
        app, http_scope(headers=[(b"x-forwarded-for", b"not-an-ip")], client=("10.0.0.2", 1))
    )
    assert "10.0.0.2" == seen[0].client


def test_invalid_trusted_proxy_is_a_configuration_error() -> None:
    """A trusted proxy that is not an address or network fails at construction."""
    with pytest.raises(ConfigurationError, match="not-a-network"):
        RequestContextMiddleware(recording_app([]), trusted_proxies=["not-a-network"])  # type: ignore[arg-type]


async def test_context_var_is_reset_after_the_request() -> None:
    """Outside a request there is no current context."""
    app = RequestContextMiddleware(recording_app([]))  # type: ignore[arg-type]
    await call(app, http_scope())
    with pytest.raises(LookupError):
        current_context()


async def test_lifespan_scopes_pass_through_untouched() -> None:
    """Non-HTTP scopes get no context."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    await RequestContextMiddleware(app)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert SCOPE_KEY not in seen[0]


def test_generated_ids_are_unique_and_not_shared_with_a_forked_worker() -> None:
    """Ids come from a pre-drawn random block; a forked child draws its own, never the parent's."""
    import os

    from bastion.context import new_id

    new_id()  # make sure the parent holds a partly used block at fork time
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write_end, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    child_ids = os.read(read_end, 8 * 32).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_ids = "".join(new_id() for _ in range(8))
    assert {child_ids[i : i + 32] for i in range(0, 256, 32)}.isdisjoint(
        {parent_ids[i : i + 32] for i in range(0, 256, 32)}
    )
    many = [new_id() for _ in range(10_000)]
    assert len(many) == len(set(many))
    assert all(HEX32.fullmatch(value) for value in many)


async def echoed_headers(
    builder: ContextBuilder, app_headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The response headers a start message carries after the builder's echo wrapper."""
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = http_scope("/x")
    echo = builder.echo(builder.build(scope), send)  # type: ignore[arg-type]
    await echo({"type": "http.response.start", "status": 200, "headers": app_headers})
    return sent[0]["headers"]  # type: ignore[return-value]


async def test_fixed_response_headers_are_added_with_the_request_id() -> None:
    """``response_headers`` ride in the same header copy as the echoed request id."""
    builder = ContextBuilder(response_headers=[(b"X-Content-Type-Options", b"nosniff")])
    headers = await echoed_headers(builder, [(b"content-type", b"text/plain")])
    assert [b"content-type", b"X-Request-ID", b"x-content-type-options"] == [
        name for name, _ in headers
    ]


async def test_fixed_response_headers_never_replace_the_apps_own() -> None:
    """A header the app set (or its own request id) is kept; only the missing ones are added."""
    builder = ContextBuilder(
        response_headers=[(b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
    )
    app_headers = [(b"x-frame-options", b"SAMEORIGIN"), (b"x-request-id", b"mine")]
    headers = await echoed_headers(builder, app_headers)
    assert [*app_headers, (b"referrer-policy", b"no-referrer")] == headers
