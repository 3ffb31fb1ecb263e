"""``CompressionMiddleware``: negotiated br / zstd / gzip responses, streaming-safe, pure ASGI."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bastion.compression._codecs import ENCODINGS, Codec, StreamCompressor, load_codec
from bastion.compression._exclude import Exclude, compile_exclude
from bastion.compression._negotiate import negotiate_cached
from bastion.exceptions import ConfigurationError, MissingDependencyError
from bastion.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    import anyio
    import anyio.lowlevel

    from bastion.settings import CompressionSettings

__all__ = ["DEFAULT_EXCLUDED_CONTENT_TYPES", "CompressionMiddleware", "compression_options"]

DEFAULT_EXCLUDED_CONTENT_TYPES = (
    # Already compressed: compressing again costs CPU and gains nothing (or a few bytes).
    "application/gzip",
    "application/octet-stream",  # opaque binary, usually a download that is compressed already
    "application/pdf",  # its streams are deflated inside the file
    "application/vnd.rar",
    "application/x-7z-compressed",
    "application/x-bzip2",
    "application/x-gzip",
    "application/x-rar-compressed",
    "application/x-xz",
    "application/zip",
    "application/zstd",
    "audio/*",
    "font/woff",
    "font/woff2",
    "image/apng",
    "image/avif",
    "image/gif",
    "image/heic",
    "image/heif",
    "image/jpeg",
    "image/jxl",
    "image/png",
    "image/webp",
    "video/*",
    # gRPC compresses per message itself; application/grpc+proto and friends are covered too.
    "application/grpc",
    # Never compressed, whatever the option says: see _ALWAYS_EXCLUDED.
    "text/event-stream",
)
"""Media types sent as they are. ``type/*`` covers a whole type; ``image/svg+xml`` and the other
text-like images are compressed."""

# Server-sent events are never compressed or held back: every event must reach the client the
# moment it is sent, and proxies that see Content-Encoding on a stream tend to buffer it.
_ALWAYS_EXCLUDED = frozenset({b"text/event-stream"})

# Statuses without content (1xx, 204, 205, 304) or whose content is a byte range of the
# uncompressed representation (206): never compressed.
_UNCOMPRESSED_STATUSES = frozenset({204, 205, 206, 304})
# Responses with these headers are left alone: already encoded, or carrying a digest of the
# content that compressing would make wrong.
_LEFT_ALONE = frozenset(
    {b"content-encoding", b"content-digest", b"repr-digest", b"content-md5", b"digest"}
)

# _inspect's answers besides a Content-Length.
_SKIP = -2  # leave the response untouched, without Vary
_UNKNOWN = -1  # eligible, length unknown

# _Responder states.
_START, _HOLD, _STREAM, _PASS = range(4)

_VARY = b"vary"
_SUFFIXED_TAG = re.compile(rb'"([^"]*)-(br|zstd|gzip)"')

# anyio is imported on the first large body, not with the module (it costs ~50 ms to import).
_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] | None = None


def _thread_limiter() -> anyio.CapacityLimiter:
    """The event loop's limiter for compression threads (8 at a time).

    A limiter of its own: large bodies being compressed never starve the app's own
    ``run_in_threadpool`` calls (sync endpoints), which share anyio's default limiter.
    """
    global _limiter
    import anyio
    import anyio.lowlevel

    if _limiter is None:
        _limiter = anyio.lowlevel.RunVar("bastion_compression_limiter")
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(8)
        _limiter.set(limiter)
        return limiter


class CompressionMiddleware:
    """Compresses responses with the best coding the client accepts: br, zstd or gzip.

    ::

        app.add_middleware(CompressionMiddleware, minimum_size=1024, exclude=["/account"])

    What is compressed: responses to ``GET``/``POST``/... (not ``HEAD``) whose status has content
    (not 1xx, 204, 205, 206, 304), at least ``minimum_size`` bytes long when the size is known
    (from ``Content-Length``, or because the whole body came in one message), whose media type is
    not in ``exclude_content_types``, and that carry no ``Content-Encoding``, no
    ``Cache-Control: no-transform`` and no content digest. ``text/event-stream`` is never
    compressed and never held back.

    What changes on a compressed response: ``Content-Encoding`` is set; ``Content-Length`` is
    the compressed length when the body came in one message, and removed for a stream (each
    chunk is compressed and flushed as it comes, so nothing is buffered); ``Accept-Ranges`` is
    removed (byte ranges address the uncompressed body); a strong ``ETag`` gets the coding as
    suffix (``"abc"`` → ``"abc-br"``), so each representation has its own validator. Requests
    whose ``If-None-Match``/``If-Match`` carry such a tag reach the app with the suffix removed,
    and a 304 answer gets the client's tag back, so conditional requests keep working.
    ``Vary: Accept-Encoding`` is added to every response that could have been compressed, also
    when this client got it uncompressed, so shared caches keep the variants apart.

    Args:
        app: the ASGI app to wrap.
        minimum_size: bodies smaller than this many bytes are sent as they are (below about a
            packet, compressing saves no round trip and costs CPU).
        encodings: the codings to offer, most preferred first. Default: ``br``, ``zstd`` and
            ``gzip``, each only if its library is installed. Listing one explicitly makes its
            library required.
        gzip_level: 1 (fast) to 9 (small).
        brotli_level: 0 to 11. Above 6, brotli gets much slower for little gain on the fly.
        zstd_level: 1 to 19.
        exclude: requests never compressed: regular expression(s) matched at the start of the
            routed path, or a predicate over the scope. **Security:** exclude the routes that
            put a secret and attacker-chosen input in the same response (BREACH).
        exclude_content_types: media types never compressed; ``type/*`` covers a whole type.
        thread_minimum_size: bodies or chunks of at least this many bytes are compressed in a
            worker thread, so a large response does not block the event loop; ``None`` never.
        compress_cross_site: compress responses to requests a browser marks
            ``Sec-Fetch-Site: cross-site``. **Security:** ``True`` by default; set ``False`` to
            deny BREACH its attack path (pages of another site making the victim's browser send
            requests) at the cost of uncompressed responses to cross-site navigations.

    Raises:
        ConfigurationError: an option is invalid.
        MissingDependencyError: an explicitly listed coding's library is not installed (the
            ``compression`` extra).
    """

    __slots__ = (
        "_codings",
        "_encodings",
        "_exclude",
        "_skip_types",
        "_type_cache",
        "_vary",
        "app",
        "compress_cross_site",
        "minimum_size",
        "thread_minimum_size",
    )

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        minimum_size: int = 1024,
        encodings: Sequence[str] | None = None,
        gzip_level: int = 6,
        brotli_level: int = 4,
        zstd_level: int = 3,
        exclude: Exclude = None,
        exclude_content_types: Collection[str] = DEFAULT_EXCLUDED_CONTENT_TYPES,
        thread_minimum_size: int | None = 128 * 1024,
        compress_cross_site: bool = True,
    ) -> None:
        if minimum_size < 0:
            raise ConfigurationError(f"minimum_size must be >= 0, not {minimum_size!r}")
        if thread_minimum_size is not None and thread_minimum_size < 1:
            raise ConfigurationError(
                f"thread_minimum_size must be positive or None, not {thread_minimum_size!r}"
            )
        if isinstance(exclude_content_types, str | bytes):
            raise ConfigurationError("exclude_content_types must be a collection of media types")
        self.app = app
        self.minimum_size = minimum_size
        self.thread_minimum_size = thread_minimum_size
        self.compress_cross_site = compress_cross_site
        levels = {"br": brotli_level, "zstd": zstd_level, "gzip": gzip_level}
        self._codings = {
            name: _Coding(codec) for name, codec in _load_codecs(encodings, levels).items()
        }
        self._encodings = tuple(self._codings)
        self._exclude = compile_exclude(exclude)
        self._skip_types = frozenset(
            _media_type(t.encode("latin-1")) for t in exclude_content_types
        )
        self._skip_types |= _ALWAYS_EXCLUDED
        self._type_cache: dict[bytes, bool] = {}
        # Deciding by Sec-Fetch-Site makes it part of what the response varies on.
        self._vary = (
            b"Accept-Encoding" if compress_cross_site else b"Accept-Encoding, Sec-Fetch-Site"
        )

    @property
    def encodings(self) -> tuple[str, ...]:
        """The codings offered, most preferred first."""
        return self._encodings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Negotiate a coding for this request and compress the response with it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exclude = self._exclude
        if exclude is not None and exclude(scope):
            await self.app(scope, receive, send)
            return
        accept: bytes | None = None
        conditional = False
        cross_site = False
        for key, value in scope["headers"]:
            if key == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
            elif key == b"if-none-match" or key == b"if-match":
                conditional = True
            elif key == b"sec-fetch-site":
                cross_site = value == b"cross-site"
        restore = _strip_etag_suffixes(scope) if conditional else None
        encoding = None
        if (
            accept is not None
            and scope["method"] != "HEAD"  # the simplest correct HEAD: the identity headers
            and (self.compress_cross_site or not cross_site)
        ):
            encoding = negotiate_cached(accept, self._encodings)
        if encoding is None:
            await self.app(scope, receive, self._identity(send, restore))
            return
        responder = _Responder(self, self._codings[encoding], send, restore)
        await self.app(scope, receive, responder.send_message)
        if responder.state == _HOLD:  # the app never sent a body: pass on what it did send
            await send(responder.start)

    def _identity(self, send: Send, restore: dict[bytes, list[bytes]] | None) -> Send:
        """``send`` for a response sent uncompressed: adds Vary when it could have been."""

        async def send_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                length = self._inspect(message)
                if length == _SKIP:
                    if restore and message["status"] == 304:
                        message = _not_modified(message, restore, None, self._vary)
                elif length == _UNKNOWN or length >= self.minimum_size:
                    message = _with_headers(
                        message, _add_vary(message.get("headers", ()), self._vary)
                    )
            await send(message)

        return send_identity

    def _inspect(self, message: Message) -> int:
        """``_SKIP`` for a response never compressed, else its Content-Length or ``_UNKNOWN``."""
        status = message["status"]
        if status < 200 or status in _UNCOMPRESSED_STATUSES:
            return _SKIP
        length = _UNKNOWN
        # ASGI response header names are lower-case (the spec requires it).
        for key, value in message.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return _SKIP  # not ours to repair
                if length < self.minimum_size:
                    return length  # too small to compress: no other header changes that
            elif key == b"content-type":
                if self._type_is_excluded(value):
                    return _SKIP
            elif key in _LEFT_ALONE or (
                key == b"cache-control" and b"no-transform" in value.lower()
            ):
                return _SKIP
        return length

    def _type_is_excluded(self, value: bytes) -> bool:
        cache = self._type_cache
        excluded = cache.get(value)
        if excluded is None:
            media_type = _media_type(value)
            main, _, sub = media_type.partition(b"/")
            types = self._skip_types
            excluded = (
                media_type in types
                or main + b"/*" in types
                or (b"+" in sub and main + b"/" + sub.partition(b"+")[0] in types)
            )
            if len(cache) < 256:  # an app has a handful of media types; never grow unbounded
                cache[value] = excluded
        return excluded


class _Coding:
    """A codec with its header values encoded once."""

    __slots__ = ("codec", "name", "suffix", "token")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.name = codec.name
        self.token = codec.name.encode("ascii")  # Content-Encoding
        self.suffix = b"-" + self.token  # ETag suffix


class _Responder:
    """The ``send`` of one compressed response: holds the start until the first body decides."""

    __slots__ = ("coding", "middleware", "restore", "send", "start", "state", "stream")

    def __init__(
        self,
        middleware: CompressionMiddleware,
        coding: _Coding,
        send: Send,
        restore: dict[bytes, list[bytes]] | None,
    ) -> None:
        self.middleware = middleware
        self.coding = coding
        self.send = send
        self.restore = restore
        self.state = _START
        self.start: Message = {}
        self.stream: StreamCompressor | None = None

    async def send_message(self, message: Message) -> None:
        """The ``send`` the app gets (a bound method: cheaper to call than the instance)."""
        state = self.state
        if state == _PASS:
            await self.send(message)
        elif state == _STREAM:
            await self._stream(message)
        elif state == _HOLD:
            await self._first_body(message)
        elif message["type"] == "http.response.start":
            middleware = self.middleware
            length = middleware._inspect(message)
            if length == _SKIP or 0 <= length < middleware.minimum_size:
                self.state = _PASS
                if self.restore and message["status"] == 304:
                    message = _not_modified(message, self.restore, self.coding, middleware._vary)
                await self.send(message)
            else:
                self.start = message
                self.state = _HOLD
        else:
            await self.send(message)

    async def _first_body(self, message: Message) -> None:
        send = self.send
        start = self.start
        vary = self.middleware._vary
        if message["type"] != "http.response.body":  # pathsend, zerocopysend: sent as they are
            self.state = _PASS
            await send(_with_headers(start, _add_vary(start.get("headers", ()), vary)))
            await send(message)
            return
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            self.state = _STREAM
            self.stream = stream = self.coding.codec.stream()
            await send(_compressed_start(start, self.coding, None, vary))
            if body:
                body = await self._run(stream.chunk, body)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            return
        self.state = _PASS
        if len(body) < self.middleware.minimum_size:
            await send(start)
            await send(message)
            return
        compressed = await self._run(self.coding.codec.compress, body)
        if len(compressed) >= len(body):  # incompressible after all: the original is smaller
            await send(_with_headers(start, _add_vary(start.get("headers", ()), vary)))
            await send(message)
            return
        length = None if start.get("trailers", False) else len(compressed)
        await send(_compressed_start(start, self.coding, length, vary))
        await send({"type": "http.response.body", "body": compressed, "more_body": False})

    async def _stream(self, message: Message) -> None:
        stream = self.stream
        if message["type"] != "http.response.body" or stream is None:
            await self.send(message)  # trailers
            return
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            if not body:  # nothing to flush
                await self.send(message)
                return
            body = await self._run(stream.chunk, body)
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        else:
            self.state = _PASS
            self.stream = None
            body = await self._run(stream.finish, body)
            await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _run(self, function: Callable[[bytes], bytes], data: bytes) -> bytes:
        threshold = self.middleware.thread_minimum_size
        if threshold is not None and len(data) >= threshold:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(function, data, limiter=_thread_limiter())
        return function(data)


def _load_codecs(encodings: Sequence[str] | None, levels: dict[str, int]) -> dict[str, Codec]:
    """The codecs to offer, in order; a default coding whose library is missing is left out."""
    if isinstance(encodings, str):
        raise ConfigurationError(f"encodings must be a sequence of codings, not {encodings!r}")
    explicit = encodings is not None
    names = list(encodings) if encodings is not None else list(ENCODINGS)
    if explicit and not names:
        raise ConfigurationError(
            "encodings is empty; to turn compression off, leave the middleware out"
        )
    if len(set(names)) != len(names):
        raise ConfigurationError(f"encodings lists a coding twice: {names!r}")
    codecs: dict[str, Codec] = {}
    for name in names:
        if name not in levels:
            raise ConfigurationError(
                f"unknown content coding {name!r} in encodings; bastion produces "
                f"{', '.join(ENCODINGS)}"
            )
        try:
            codecs[name] = load_codec(name, levels[name])
        except MissingDependencyError:
            if explicit:
                raise
    return codecs


def _media_type(value: bytes) -> bytes:
    return value.partition(b";")[0].strip().lower()


def _with_headers(message: Message, headers: list[tuple[bytes, bytes]]) -> Message:
    # A new message and a new list: a response object may send the same header list again.
    return {**message, "headers": headers}


def _add_vary(headers: Iterable[tuple[bytes, bytes]], vary: bytes) -> list[tuple[bytes, bytes]]:
    """A new header list whose Vary also lists the tokens of ``vary`` (no duplicates)."""
    result = list(headers)
    for key, _ in result:
        if key.lower() == _VARY:
            return _merge_vary(result, vary)
    result.append((_VARY, vary))
    return result


def _merge_vary(headers: list[tuple[bytes, bytes]], vary: bytes) -> list[tuple[bytes, bytes]]:
    """Merge the tokens of ``vary`` into the first Vary of ``headers`` (which has one)."""
    first = -1
    present: set[bytes] = set()
    for index, (key, value) in enumerate(headers):
        if key.lower() == _VARY:
            if first < 0:
                first = index
            present.update(token.strip().lower() for token in value.split(b","))
    if b"*" in present:
        return headers
    missing = [token.strip() for token in vary.split(b",") if token.strip().lower() not in present]
    if missing:
        key, value = headers[first]
        headers[first] = (key, b", ".join([value, *missing] if value.strip() else missing))
    return headers


def _compressed_start(start: Message, coding: _Coding, length: int | None, vary: bytes) -> Message:
    """The start of a compressed response: headers rewritten in one pass over the app's."""
    headers: list[tuple[bytes, bytes]] = []
    has_vary = False
    for key, value in start.get("headers", ()):
        lower = key.lower()
        if lower == b"content-length" or lower == b"accept-ranges":
            continue
        if lower == b"etag":
            value = _suffixed_etag(value, coding.suffix)
        elif lower == _VARY:
            has_vary = True
        headers.append((key, value))
    headers.append((b"content-encoding", coding.token))
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    if has_vary:
        _merge_vary(headers, vary)
    else:
        headers.append((_VARY, vary))
    return {**start, "headers": headers}


def _suffixed_etag(value: bytes, suffix: bytes) -> bytes:
    """``"abc"`` → ``"abc-br"``; weak and malformed tags stay as they are.

    A weak tag already says "semantically equivalent, not byte-identical", which the
    compressed body is; a strong tag must differ per representation.
    """
    tag = value.strip()
    if len(tag) >= 2 and tag[:1] == b'"' and tag[-1:] == b'"':
        return tag[:-1] + suffix + b'"'
    return value


def _strip_etag_suffixes(scope: Scope) -> dict[bytes, list[bytes]] | None:
    """Remove the coding suffix from tags in ``If-None-Match``/``If-Match``, for the app.

    The app knows its tag as ``"abc"``; a client holding the br variant asks with ``"abc-br"``.
    Returns what was removed (``{b'"abc"': [b'"abc-br"']}``) to put back on a 304, or ``None``.
    ``If-Range`` is left alone: a range must never be served from another representation.
    """
    headers = scope["headers"]
    removed: dict[bytes, list[bytes]] = {}
    changed: list[tuple[bytes, bytes]] | None = None

    def strip(match: re.Match[bytes]) -> bytes:
        base = b'"' + match[1] + b'"'
        removed.setdefault(base, []).append(match[0])
        return base

    for index, (key, value) in enumerate(headers):
        if (key == b"if-none-match" or key == b"if-match") and b"-" in value:
            stripped = _SUFFIXED_TAG.sub(strip, value)
            if stripped != value:
                if changed is None:
                    changed = [(k, v) for k, v in headers]
                changed[index] = (key, stripped)
    if changed is None:
        return None
    scope["headers"] = changed  # a new list: the server's own list stays as it was received
    return removed


def _not_modified(
    message: Message,
    restore: dict[bytes, list[bytes]],
    coding: _Coding | None,
    vary: bytes,
) -> Message:
    """A 304 for a tag whose suffix was removed gets the client's own (suffixed) tag back.

    When the client sent several variants' tags, the one of the coding it would get now wins.
    """
    headers = list(message.get("headers", ()))
    for index, (key, value) in enumerate(headers):
        if key.lower() == b"etag":
            tags = restore.get(value.strip())
            if not tags:
                return message
            wanted = coding.suffix + b'"' if coding is not None else b"\0"
            headers[index] = (key, next((t for t in tags if t.endswith(wanted)), tags[0]))
            return _with_headers(message, _add_vary(headers, vary))
    return message


def compression_options(settings: CompressionSettings) -> dict[str, Any]:
    """``CompressionMiddleware`` keyword arguments from the ``compression`` settings section.

    ::

        app.add_middleware(CompressionMiddleware, **compression_options(settings.compression))
    """
    return {
        "minimum_size": settings.minimum_size,
        "encodings": tuple(settings.encodings) if settings.encodings is not None else None,
        "gzip_level": settings.gzip_level,
        "brotli_level": settings.brotli_level,
        "zstd_level": settings.zstd_level,
        "exclude": list(settings.exclude) or None,
        "thread_minimum_size": settings.thread_minimum_size,
        "compress_cross_site": settings.compress_cross_site,
    }
