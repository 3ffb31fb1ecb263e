"""CompressionMiddleware: what is compressed, how the headers change, and streams stay live."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.compression import (
    ENCODINGS,
    CompressionMiddleware,
    compression_options,
)
from bastion.exceptions import ConfigurationError, MissingDependencyError
from bastion.settings import load_settings
from bastion.types import ASGIApp, Message, Receive, Scope, Send
from tests.asgi import RawResponse, call, http_scope
from tests.compression.decoders import IncrementalDecoder, decompress

ITEMS = [{"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"]} for i in range(40)]
BODY = orjson.dumps(ITEMS)  # about 2.3 KB of JSON
SMALL = b'{"ok": true}'
JSON = (b"content-type", b"application/json")

Headers = list[tuple[bytes, bytes]]


def respond(
    chunks: Sequence[bytes] = (BODY,),
    *,
    status: int = 200,
    headers: Headers | None = None,
    content_length: bool = True,
) -> ASGIApp:
    """A raw ASGI app sending ``chunks`` as the body (one message each), with these headers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response_headers = list(headers if headers is not None else [JSON])
        if content_length:
            size = sum(len(chunk) for chunk in chunks)
            response_headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


async def get(
    app: ASGIApp,
    accept: str | None = "br",
    *,
    path: str = "/",
    method: str = "GET",
    headers: Headers | None = None,
    **options: Any,
) -> RawResponse:
    """Send one request through a CompressionMiddleware around ``app``."""
    request_headers = list(headers or [])
    if accept is not None:
        request_headers.append((b"accept-encoding", accept.encode()))
    middleware = CompressionMiddleware(app, **options)
    return await call(middleware, http_scope(path, method=method, headers=request_headers))


def fastapi_app() -> FastAPI:
    """A tiny FastAPI app: a JSON response, a small one, a text stream and an event stream."""
    app = FastAPI()

    @app.get("/items")
    async def items() -> JSONResponse:
        return JSONResponse(ITEMS, headers={"ETag": '"items-v1"'})

    @app.get("/small")
    async def small() -> JSONResponse:
        return JSONResponse({"ok": True})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for index in range(5):
                yield f"line {index}: ".encode() + b"x" * 300 + b"\n"

        return StreamingResponse(lines(), media_type="text/plain")

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            for index in range(3):
                yield f"data: {index}\n\n".encode() * 200

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_fastapi_json_response_round_trips(encoding: str) -> None:
    """A JSONResponse comes back compressed, with its exact length, and decodes to the JSON."""
    response = await get(fastapi_app(), encoding, path="/items")
    assert 200 == response.status
    assert encoding == response.headers["content-encoding"]
    assert str(len(response.body)) == response.headers["content-length"]
    assert len(response.body) < len(orjson.dumps(ITEMS))
    assert ITEMS == orjson.loads(decompress(response.body, encoding))


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_starlette_streaming_response_round_trips(encoding: str) -> None:
    """A StreamingResponse is compressed chunk by chunk, without Content-Length."""
    response = await get(fastapi_app(), encoding, path="/stream")
    expected = b"".join(f"line {i}: ".encode() + b"x" * 300 + b"\n" for i in range(5))
    assert encoding == response.headers["content-encoding"]
    assert "content-length" not in response.headers
    assert 6 == sum(1 for m in response.messages if m["type"] == "http.response.body")
    assert expected == decompress(response.body, encoding)


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_tiny_starlette_app_round_trips(encoding: str) -> None:
    """The middleware added to a Starlette app with add_middleware works the same."""

    async def homepage(request: Request) -> Response:
        return PlainTextResponse("hello world " * 200)

    app = Starlette(routes=[Route("/", homepage)])
    app.add_middleware(CompressionMiddleware, minimum_size=100)
    response = await call(app, http_scope("/", headers=[(b"accept-encoding", encoding.encode())]))
    assert encoding == response.headers["content-encoding"]
    assert b"hello world " * 200 == decompress(response.body, encoding)


@pytest.mark.anyio
async def test_a_body_sent_in_one_message_without_content_length_gets_one() -> None:
    """A whole body in one message is compressed at once and its length is set."""
    response = await get(respond(content_length=False))
    assert str(len(response.body)) == response.headers["content-length"]
    assert BODY == decompress(response.body, "br")


@pytest.mark.anyio
async def test_a_known_length_body_sent_in_chunks_loses_its_length() -> None:
    """Content-Length describes the uncompressed body; a compressed stream drops it."""
    response = await get(respond([BODY[:1000], BODY[1000:]]), "gzip")
    assert "content-length" not in response.headers
    assert BODY == decompress(response.body, "gzip")


@pytest.mark.anyio
async def test_several_accept_encoding_lines_are_read_together() -> None:
    """Two Accept-Encoding header lines count as one comma-separated list."""
    headers = [(b"accept-encoding", b"gzip;q=0.5"), (b"accept-encoding", b"zstd")]
    response = await get(respond(), None, headers=headers)
    assert "zstd" == response.headers["content-encoding"]


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_each_chunk_is_sent_and_decodable_before_the_next_is_produced(
    encoding: str,
) -> None:
    """The app produces chunk n+1 only after the client decoded chunk n: nothing is buffered."""
    chunks = [f"chunk {i} ".encode() * 40 for i in range(4)]
    decoded: list[bytes] = []
    received = [anyio.Event() for _ in chunks]
    decoder = IncrementalDecoder(encoding)
    started = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [JSON]})
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with anyio.fail_after(2):  # a buffering middleware would never deliver it
                await received[index].wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message["headers"])
            assert encoding.encode() == headers[b"content-encoding"]
            started.set()
        elif message.get("more_body", False):
            assert started.is_set()
            decoded.append(decoder.feed(message["body"]))
            received[len(decoded) - 1].set()
        else:
            decoded.append(decoder.feed(message["body"]))

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = http_scope(headers=[(b"accept-encoding", encoding.encode())])
    await CompressionMiddleware(app)(scope, receive, send)
    assert [*chunks, b""] == decoded


@pytest.mark.anyio
async def test_empty_chunks_of_a_stream_are_passed_on_as_they_are() -> None:
    """An empty chunk in the middle of a stream costs no flush bytes."""
    response = await get(respond([b"a" * 2000, b"", b"b" * 2000], content_length=False))
    bodies = [m["body"] for m in response.messages if m["type"] == "http.response.body"]
    assert b"" == bodies[1]
    assert b"a" * 2000 + b"b" * 2000 == decompress(response.body, "br")


@pytest.mark.anyio
async def test_an_empty_first_chunk_sends_the_headers_at_once() -> None:
    """A stream starting with an empty chunk gets its headers out before any data exists."""
    response = await get(respond([b"", b"data " * 400], content_length=False), "gzip")
    assert "gzip" == response.headers["content-encoding"]
    assert b"" == response.messages[1]["body"]
    assert b"data " * 400 == decompress(response.body, "gzip")


@pytest.mark.anyio
async def test_an_event_stream_is_neither_compressed_nor_held_back() -> None:
    """SSE headers and each event reach the client while the app is still producing."""
    sent: list[Message] = []
    release = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n" * 500, "more_body": True})
        with anyio.fail_after(2):
            await release.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("more_body", False):
            release.set()

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = http_scope(headers=[(b"accept-encoding", b"br, gzip")])
    await CompressionMiddleware(app)(scope, receive, send)
    assert [(b"content-type", b"text/event-stream; charset=utf-8")] == sent[0]["headers"]
    assert b"data: 1\n\n" * 500 == sent[1]["body"]


@pytest.mark.anyio
async def test_a_fastapi_event_stream_is_sent_uncompressed() -> None:
    """An EventSource endpoint of FastAPI gets no Content-Encoding and no Vary."""
    response = await get(fastapi_app(), "br", path="/events")
    assert "content-encoding" not in response.headers
    assert "vary" not in response.headers
    assert b"data: 0\n\n" * 200 == response.body[: len(b"data: 0\n\n") * 200]


# -- what is not compressed ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("size", "compressed"), [(1023, False), (1024, True)], ids=["below", "at-minimum"]
)
async def test_minimum_size_from_content_length(size: int, compressed: bool) -> None:
    """Bodies below minimum_size (1024 by default) are sent as they are, without Vary."""
    response = await get(respond([b"a" * size]))
    assert compressed == ("content-encoding" in response.headers)
    assert compressed == ("vary" in response.headers)


@pytest.mark.anyio
async def test_a_small_body_in_one_message_without_length_is_not_compressed() -> None:
    """When the whole body arrives at once, its size decides even without Content-Length."""
    response = await get(respond([SMALL], content_length=False))
    assert SMALL == response.body
    assert "content-encoding" not in response.headers


@pytest.mark.anyio
async def test_a_small_fastapi_response_passes_through() -> None:
    """A small JSONResponse is untouched: same bytes, same headers."""
    response = await get(fastapi_app(), "br", path="/small")
    assert b'{"ok":true}' == response.body
    assert {"content-length": "11", "content-type": "application/json"} == response.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [
        "image/png",
        "image/jpeg",
        "image/webp",
        "IMAGE/AVIF; foo=bar",
        "video/mp4",
        "audio/mpeg",
        "font/woff2",
        "application/zip",
        "application/gzip",
        "application/zstd",
        "application/pdf",
        "application/octet-stream",
        "application/grpc+proto",
        "text/event-stream",
    ],
)
async def test_compressed_media_types_are_sent_as_they_are(content_type: str) -> None:
    """Already-compressed types are neither compressed nor marked with Vary."""
    app = respond(headers=[(b"content-type", content_type.encode())])
    response = await get(app)
    assert BODY == response.body
    assert "content-encoding" not in response.headers
    assert "vary" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [
        "image/svg+xml",
        "text/html; charset=utf-8",
        "application/json",
        "application/problem+json",
        "text/css",
        "text/javascript",
        "application/x-ndjson",
    ],
)
async def test_text_like_media_types_are_compressed(content_type: str) -> None:
    """Text, JSON and SVG are compressed."""
    response = await get(respond(headers=[(b"content-type", content_type.encode())]))
    assert "br" == response.headers["content-encoding"]


@pytest.mark.anyio
async def test_a_response_without_content_type_is_compressed() -> None:
    """No media type means nothing says the body is compressed already."""
    response = await get(respond(headers=[]))
    assert "br" == response.headers["content-encoding"]


@pytest.mark.anyio
async def test_custom_excluded_types_still_never_compress_event_streams() -> None:
    """exclude_content_types replaces the default list, but SSE stays excluded."""
    types = ["text/html"]
    html = await get(
        respond(headers=[(b"content-type", b"text/html")]), exclude_content_types=types
    )
    sse = await get(
        respond(headers=[(b"content-type", b"text/event-stream")]), exclude_content_types=types
    )
    png = await get(respond(headers=[(b"content-type", b"image/png")]), exclude_content_types=types)
    assert "content-encoding" not in html.headers
    assert "content-encoding" not in sse.headers
    assert "br" == png.headers["content-encoding"]


@pytest.mark.anyio
async def test_an_already_encoded_response_is_untouched() -> None:
    """A body with Content-Encoding keeps its bytes and headers (no double compression)."""
    encoded = b"\x1f\x8b pretend gzip" * 100
    headers = [JSON, (b"content-encoding", b"gzip")]
    response = await get(respond([encoded], headers=headers), "br, gzip")
    assert encoded == response.body
    assert [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("content-length", str(len(encoded))),
    ] == response.header_list


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header",
    [
        (b"cache-control", b"public, No-Transform"),
        (b"content-digest", b"sha-256=:abc=:"),
        (b"repr-digest", b"sha-256=:abc=:"),
    ],
)
async def test_no_transform_and_digests_leave_the_response_alone(
    header: tuple[bytes, bytes],
) -> None:
    """Cache-Control: no-transform is honoured; a digest would be wrong after compressing."""
    response = await get(respond(headers=[JSON, header]))
    assert BODY == response.body
    assert "content-encoding" not in response.headers
    assert "vary" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize("status", [101, 204, 205, 206, 304])
async def test_statuses_without_full_content_are_not_compressed(status: int) -> None:
    """1xx, 204, 205, 304 have no content; 206 is a range of the uncompressed body."""
    response = await get(respond(status=status))
    assert "content-encoding" not in response.headers
    assert "vary" not in response.headers


@pytest.mark.anyio
async def test_a_malformed_content_length_is_left_alone() -> None:
    """A response whose length cannot be read is not ours to repair: it passes untouched."""
    response = await get(
        respond(headers=[JSON, (b"content-length", b"lots")], content_length=False)
    )
    assert [("content-type", "application/json"), ("content-length", "lots")] == (
        response.header_list
    )


@pytest.mark.anyio
async def test_error_responses_are_compressed_too() -> None:
    """A large 500 or 404 body is content like any other."""
    response = await get(respond(status=500), "gzip")
    assert "gzip" == response.headers["content-encoding"]


@pytest.mark.anyio
async def test_head_is_answered_uncompressed_with_vary() -> None:
    """HEAD gets the identity headers (its Content-Length stays right), plus Vary."""
    response = await get(respond(), "br", method="HEAD")
    assert "content-encoding" not in response.headers
    assert str(len(BODY)) == response.headers["content-length"]
    assert "Accept-Encoding" == response.headers["vary"]


@pytest.mark.anyio
async def test_an_incompressible_body_is_sent_as_it_is() -> None:
    """If compressing does not make the body smaller, the original goes out (with Vary)."""
    noise = os.urandom(4096)
    response = await get(respond([noise], headers=[(b"content-type", b"text/plain")]))
    assert noise == response.body
    assert "content-encoding" not in response.headers
    assert str(len(noise)) == response.headers["content-length"]
    assert "Accept-Encoding" == response.headers["vary"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exclude",
    [
        "/account",
        ["/health$", "/account"],
        lambda scope: scope["path"].startswith("/account"),
    ],
    ids=["regex", "regex-list", "predicate"],
)
async def test_excluded_requests_pass_through(exclude: Any) -> None:
    """exclude= takes regexes matched at the start of the path, or a predicate on the scope."""
    excluded = await get(respond(), path="/account/settings", exclude=exclude)
    included = await get(respond(), path="/catalog/account", exclude=exclude)
    assert "content-encoding" not in excluded.headers
    assert "vary" not in excluded.headers
    assert "br" == included.headers["content-encoding"]


@pytest.mark.anyio
async def test_an_empty_exclude_list_excludes_nothing() -> None:
    """exclude=[] is the same as no exclusion."""
    response = await get(respond(), path="/account", exclude=[])
    assert "br" == response.headers["content-encoding"]


@pytest.mark.anyio
async def test_exclude_matches_the_path_under_root_path() -> None:
    """Patterns match the routed path, without the mount's root_path."""
    scope = http_scope("/api/account", headers=[(b"accept-encoding", b"br")])
    scope["root_path"] = "/api"
    response = await call(CompressionMiddleware(respond(), exclude="/account"), scope)
    assert "content-encoding" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_other_scopes_are_passed_through_untouched(scope_type: str) -> None:
    """Only HTTP is compressed; the app gets the server's own receive and send."""
    seen: list[tuple[Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        """Never called."""

    await CompressionMiddleware(app)({"type": scope_type}, receive, send)
    assert [(receive, send)] == seen


# -- cross-site requests (BREACH) -------------------------------------------------------------


@pytest.mark.anyio
async def test_cross_site_requests_can_be_left_uncompressed() -> None:
    """With compress_cross_site=False, a cross-site request gets identity, same-site gets br."""
    cross = [(b"sec-fetch-site", b"cross-site")]
    same = [(b"sec-fetch-site", b"same-origin")]
    refused = await get(respond(), headers=cross, compress_cross_site=False)
    allowed = await get(respond(), headers=same, compress_cross_site=False)
    default = await get(respond(), headers=cross)
    assert "content-encoding" not in refused.headers
    assert "Accept-Encoding, Sec-Fetch-Site" == refused.headers["vary"]
    assert "br" == allowed.headers["content-encoding"]
    assert "Accept-Encoding, Sec-Fetch-Site" == allowed.headers["vary"]
    assert "br" == default.headers["content-encoding"]


# -- Vary ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("accept", ["br", None])
@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ([], [("vary", "Accept-Encoding")]),
        ([(b"vary", b"Origin")], [("vary", "Origin, Accept-Encoding")]),
        ([(b"Vary", b"origin, accept-encoding")], [("vary", "origin, accept-encoding")]),
        ([(b"vary", b"*")], [("vary", "*")]),
        ([(b"vary", b"")], [("vary", "Accept-Encoding")]),
        (
            [(b"vary", b"Origin"), (b"vary", b"Accept-Encoding")],
            [("vary", "Origin"), ("vary", "Accept-Encoding")],
        ),
    ],
    ids=["none", "other", "present", "star", "empty", "two-lines"],
)
async def test_vary_is_merged_without_duplicates(
    vary: Headers, expected: list[tuple[str, str]], accept: str | None
) -> None:
    """Vary: Accept-Encoding is added to the existing Vary, also when the body is identity."""
    response = await get(respond(headers=[JSON, *vary]), accept)
    assert expected == [(k, v) for k, v in response.header_list if k == "vary"]


@pytest.mark.anyio
async def test_an_identity_client_gets_the_body_untouched_with_vary() -> None:
    """Without Accept-Encoding: same bytes and length, and Vary for the caches."""
    response = await get(fastapi_app(), None, path="/items")
    assert orjson.dumps(ITEMS) == response.body
    assert str(len(response.body)) == response.headers["content-length"]
    assert "Accept-Encoding" == response.headers["vary"]
    assert '"items-v1"' == response.headers["etag"]


@pytest.mark.anyio
async def test_a_response_object_sent_twice_is_not_altered() -> None:
    """The app's header list is never modified, so a reused response stays correct."""
    headers = [JSON, (b"content-length", str(len(BODY)).encode()), (b"etag", b'"v"')]
    original = list(headers)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    await get(app, "br")
    await get(app, None)
    assert original == headers


# -- ETags and conditional requests ----------------------------------------------------------


def conditional_app(seen: list[Headers]) -> ASGIApp:
    """An app with ETag "v1" that answers If-None-Match with 304, recording request headers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = list(scope["headers"])
        seen.append(headers)
        etag = b'"v1"'
        if_none_match = dict(headers).get(b"if-none-match", b"")
        if etag in [tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")]:
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]})
            await send({"type": "http.response.body", "body": b""})
            return
        start_headers = [JSON, (b"etag", etag), (b"content-length", str(len(BODY)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        await send({"type": "http.response.body", "body": BODY})

    return app


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_strong_etag_gets_the_coding_as_suffix(encoding: str) -> None:
    """Each compressed representation has its own strong validator."""
    response = await get(conditional_app([]), encoding)
    assert f'"v1-{encoding}"' == response.headers["etag"]


@pytest.mark.anyio
async def test_weak_etags_are_kept() -> None:
    """A weak tag already allows byte differences; it is left as it is."""
    response = await get(respond(headers=[JSON, (b"etag", b'W/"v1"')]))
    assert 'W/"v1"' == response.headers["etag"]


@pytest.mark.anyio
@pytest.mark.parametrize("accept", ["br", "gzip", None])
async def test_if_none_match_with_a_suffixed_tag_gets_a_304_with_that_tag(
    accept: str | None,
) -> None:
    """The app sees its own tag; the client's 304 carries the tag it holds, and Vary."""
    seen: list[Headers] = []
    headers = [(b"if-none-match", b'"other", "v1-br"')]
    response = await get(conditional_app(seen), accept, headers=headers)
    assert 304 == response.status
    assert '"v1-br"' == response.headers["etag"]
    assert "Accept-Encoding" == response.headers["vary"]
    assert b'"other", "v1"' == dict(seen[0])[b"if-none-match"]


@pytest.mark.anyio
async def test_the_304_prefers_the_tag_of_the_negotiated_coding() -> None:
    """A client holding several variants gets back the tag of the one it would get now."""
    headers = [(b"if-none-match", b'"v1-gzip", W/"v1-zstd"')]
    response = await get(conditional_app([]), "zstd", headers=headers)
    assert '"v1-zstd"' == response.headers["etag"]


@pytest.mark.anyio
async def test_an_unsuffixed_tag_still_gets_its_304_untouched() -> None:
    """A client holding the identity variant gets the app's own 304."""
    response = await get(conditional_app([]), "br", headers=[(b"if-none-match", b'"v1"')])
    assert 304 == response.status
    assert [("etag", '"v1"')] == response.header_list


@pytest.mark.anyio
@pytest.mark.parametrize("etag", [[(b"etag", b'"v2"')], []], ids=["other-tag", "no-tag"])
async def test_a_304_for_another_tag_is_left_alone(etag: Headers) -> None:
    """Only a 304 naming the tag whose suffix was removed gets the client's tag back."""
    headers = [(b"if-none-match", b'"v1-br"')]
    response = await get(respond([b""], status=304, headers=etag), "br", headers=headers)
    assert [(k.decode(), v.decode()) for k, v in etag] + [("content-length", "0")] == (
        response.header_list
    )


@pytest.mark.anyio
async def test_tags_without_a_coding_suffix_reach_the_app_unchanged() -> None:
    """Hyphenated tags of the app's own are not mistaken for variants."""
    seen: list[Headers] = []
    headers = [(b"if-none-match", b'"v-1", W/"a-b"')]
    await get(conditional_app(seen), "br", headers=headers)
    assert headers[0] == next(h for h in seen[0] if h[0] == b"if-none-match")


@pytest.mark.anyio
async def test_if_match_reaches_the_app_without_the_suffix() -> None:
    """A write conditioned on the br variant's tag is checked against the app's own tag."""
    seen: list[Headers] = []
    await get(conditional_app(seen), "br", method="PUT", headers=[(b"if-match", b'"v1-br"')])
    assert b'"v1"' == dict(seen[0])[b"if-match"]


@pytest.mark.anyio
async def test_if_range_is_left_alone() -> None:
    """A range request for another variant must fail its If-Range, never mix bytes."""
    seen: list[Headers] = []
    await get(conditional_app(seen), "br", headers=[(b"if-range", b'"v1-br"')])
    assert b'"v1-br"' == dict(seen[0])[b"if-range"]


@pytest.mark.anyio
async def test_compressed_responses_drop_accept_ranges() -> None:
    """Byte ranges address the uncompressed body, so they are not offered on a compressed one."""
    response = await get(respond(headers=[JSON, (b"accept-ranges", b"bytes")]))
    assert "br" == response.headers["content-encoding"]
    assert "accept-ranges" not in response.headers


# -- ASGI edge cases -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pathsend_is_passed_on_uncompressed() -> None:
    """A file sent by path (ASGI pathsend) cannot be compressed: it goes out as it is."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [JSON, (b"content-length", b"5000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": "/srv/data.json"})

    response = await get(app)
    assert "5000" == response.headers["content-length"]
    assert "content-encoding" not in response.headers
    assert {"type": "http.response.pathsend", "path": "/srv/data.json"} == response.messages[1]


@pytest.mark.anyio
async def test_trailers_are_forwarded_and_length_is_dropped() -> None:
    """With trailers announced, the compressed body has no Content-Length; trailers follow."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [JSON, (b"content-length", str(len(BODY)).encode())]
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        await send({**start, "trailers": True})
        await send({"type": "http.response.body", "body": BODY})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")]})

    response = await get(app)
    assert "content-length" not in response.headers
    assert "http.response.trailers" == response.messages[-1]["type"]
    assert BODY == decompress(response.body, "br")


@pytest.mark.anyio
async def test_messages_before_the_start_are_passed_on() -> None:
    """An early-hints message (sent before the start) goes straight to the server."""
    hint = {"type": "http.response.early_hint", "links": ["</style.css>; rel=preload"]}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(hint)
        await respond()(scope, receive, send)

    response = await get(app)
    assert hint == response.messages[0]
    assert BODY == decompress(response.body, "br")


@pytest.mark.anyio
async def test_a_start_without_a_body_is_still_sent() -> None:
    """An app that returns after its start message gets it delivered (held, not lost)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [JSON]})

    response = await get(app)
    assert ["http.response.start"] == [m["type"] for m in response.messages]


@pytest.mark.anyio
async def test_a_failure_before_the_body_sends_nothing() -> None:
    """The held start is dropped, so the error boundary outside can still answer 500."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [JSON]})
        raise RuntimeError("boom")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = http_scope(headers=[(b"accept-encoding", b"br")])
    with pytest.raises(RuntimeError, match="boom"):
        await CompressionMiddleware(app)(scope, receive, send)
    assert [] == sent


@pytest.mark.anyio
async def test_large_bodies_are_compressed_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bodies and chunks above thread_minimum_size do not block the event loop."""
    sizes: list[int] = []
    run_sync = anyio.to_thread.run_sync

    async def spy(function: Callable[[bytes], bytes], data: bytes, **kwargs: Any) -> bytes:
        sizes.append(len(data))
        return await run_sync(function, data, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    whole = await get(respond(), "zstd", thread_minimum_size=2000)
    streamed = await get(respond([BODY, b"tail"]), "gzip", thread_minimum_size=2000)
    assert BODY == decompress(whole.body, "zstd")
    assert BODY + b"tail" == decompress(streamed.body, "gzip")
    assert [len(BODY), len(BODY)] == sizes  # the small tail stayed on the loop


# -- options ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_encodings_sets_what_is_offered_and_the_preference() -> None:
    """Only the listed codings are offered, in the listed order of preference."""
    middleware = CompressionMiddleware(respond(), encodings=["gzip", "br"])
    response = await call(middleware, http_scope(headers=[(b"accept-encoding", b"br, gzip")]))
    assert ("gzip", "br") == middleware.encodings
    assert "gzip" == response.headers["content-encoding"]


def test_a_missing_default_library_just_removes_its_coding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without brotli, the default offer is zstd and gzip."""
    monkeypatch.setitem(sys.modules, "brotli", None)
    assert ("zstd", "gzip") == CompressionMiddleware(respond()).encodings


def test_an_explicitly_listed_coding_must_be_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for br without brotli fails at startup, naming the extra to install."""
    monkeypatch.setitem(sys.modules, "brotli", None)
    with pytest.raises(MissingDependencyError, match=r"bastion\[compression\]"):
        CompressionMiddleware(respond(), encodings=["br", "gzip"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"minimum_size": -1}, "minimum_size"),
        ({"thread_minimum_size": 0}, "thread_minimum_size"),
        ({"encodings": []}, "encodings is empty"),
        ({"encodings": "gzip"}, "sequence of codings"),
        ({"encodings": ["gzip", "gzip"]}, "twice"),
        ({"encodings": ["deflate"]}, "unknown content coding 'deflate'"),
        ({"brotli_level": 12}, "br level must be from 0 to 11"),
        ({"zstd_level": 22}, "zstd level must be from 1 to 19"),
        ({"exclude": "(unclosed"}, "not a valid regex"),
        ({"exclude": [1]}, "exclude must be"),
        ({"exclude_content_types": "text/html"}, "collection of media types"),
    ],
)
def test_invalid_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    """Every invalid option is a ConfigurationError that says what is wrong."""
    with pytest.raises(ConfigurationError, match=message):
        CompressionMiddleware(respond(), **options)


def test_settings_turn_into_options(isolated_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """BASTION_COMPRESSION__* variables become CompressionMiddleware keyword arguments."""
    monkeypatch.setenv("BASTION_COMPRESSION__ENCODINGS", "zstd, gzip")
    monkeypatch.setenv("BASTION_COMPRESSION__MINIMUM_SIZE", "512")
    monkeypatch.setenv("BASTION_COMPRESSION__EXCLUDE", "/account,/admin/")
    monkeypatch.setenv("BASTION_COMPRESSION__COMPRESS_CROSS_SITE", "false")
    options = compression_options(load_settings().compression)
    assert {
        "minimum_size": 512,
        "encodings": ("zstd", "gzip"),
        "gzip_level": 6,
        "brotli_level": 4,
        "zstd_level": 3,
        "exclude": ["/account", "/admin/"],
        "thread_minimum_size": 128 * 1024,
        "compress_cross_site": False,
    } == options
    assert ("zstd", "gzip") == CompressionMiddleware(respond(), **options).encodings


def test_default_settings_give_the_default_middleware(isolated_env: None) -> None:
    """Unset settings mean every installed coding and nothing excluded."""
    settings = load_settings().compression
    options = compression_options(settings)
    assert settings.enabled
    assert None is options["encodings"]
    assert None is options["exclude"]
    assert ENCODINGS == CompressionMiddleware(respond(), **options).encodings


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("BASTION_COMPRESSION__ENCODINGS", "deflate", "BASTION_COMPRESSION__ENCODINGS"),
        ("BASTION_COMPRESSION__ENCODINGS", "gzip,gzip", "each at most once"),
        ("BASTION_COMPRESSION__ZSTD_LEVEL", "22", "less than or equal to 19"),
        ("BASTION_COMPRESSION__EXCLUDE", "/ok,(", "not a valid regular expression"),
        ("BASTION_COMPRESSION__MINIMUM_SIZE", "-1", "greater than or equal to 0"),
    ],
)
def test_invalid_settings_name_the_variable(
    isolated_env: None,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    fragment: str,
) -> None:
    """A bad BASTION_COMPRESSION__* value fails at startup, naming the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert variable in str(caught.value)
    assert fragment in str(caught.value)
