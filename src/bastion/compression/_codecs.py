"""The content codings bastion produces: ``gzip`` (stdlib), ``br`` (brotli), ``zstd`` (zstandard).

A ``Codec`` compresses a whole body in one call, or starts a ``StreamCompressor`` that compresses
a response chunk by chunk and flushes after each chunk, so everything sent so far can be decoded
by the client at once. Brotli and Zstandard come with the ``compression`` extra and are imported
only when a codec for them is built.
"""

from __future__ import annotations

import importlib
import threading
import zlib
from functools import lru_cache
from typing import Any, Protocol, cast

from bastion.exceptions import ConfigurationError, MissingDependencyError

__all__ = [
    "DEFAULT_LEVELS",
    "ENCODINGS",
    "LEVEL_RANGES",
    "Codec",
    "StreamCompressor",
    "available_encodings",
    "compress",
    "load_codec",
]

ENCODINGS = ("br", "zstd", "gzip")
"""Every coding bastion can produce, in its default order of preference."""

DEFAULT_LEVELS = {"br": 4, "zstd": 3, "gzip": 6}
"""Levels for compressing on the fly: brotli 4 already beats gzip 9 on size, and brotli above 6
costs several times the CPU for a few percent."""

LEVEL_RANGES = {"br": (0, 11), "zstd": (1, 19), "gzip": (1, 9)}
"""Accepted levels. zstd stops at 19: above it the window exceeds the 8 MB that HTTP clients
must support (RFC 9659), and browsers refuse such responses."""

_LIBRARIES = {"br": "brotli", "zstd": "zstandard"}
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
_BROTLI_WINDOW = 22  # 4 MiB, brotli's default; decoders must support up to 16 MiB


class StreamCompressor(Protocol):
    """Compresses one response body chunk by chunk (one instance per response)."""

    def chunk(self, data: bytes) -> bytes:
        """Compress ``data`` and flush: the output decodes to everything fed so far."""
        ...

    def finish(self, data: bytes) -> bytes:
        """Compress the last ``data`` and end the stream."""
        ...


class Codec(Protocol):
    """One content coding at one level."""

    @property
    def name(self) -> str:
        """The coding's token in ``Accept-Encoding`` and ``Content-Encoding``."""
        ...

    def compress(self, body: bytes) -> bytes:
        """Compress a whole body (thread-safe)."""
        ...

    def stream(self) -> StreamCompressor:
        """Start compressing a body that arrives in chunks."""
        ...


class _GzipStream:
    __slots__ = ("_compressor",)

    def __init__(self, level: int) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)

    def chunk(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_FINISH)


class _Gzip:
    __slots__ = ("level",)
    name = "gzip"

    def __init__(self, level: int) -> None:
        self.level = level

    def compress(self, body: bytes) -> bytes:
        # zlib.compress writes mtime 0, so equal bodies compress to equal bytes (gzip.compress
        # stamps the current time, which defeats comparing or caching the output).
        return zlib.compress(body, self.level, wbits=_GZIP_WBITS)

    def stream(self) -> StreamCompressor:
        return _GzipStream(self.level)


class _BrotliStream:
    __slots__ = ("_compressor",)

    def __init__(self, brotli: Any, level: int) -> None:
        self._compressor = brotli.Compressor(quality=level, lgwin=_BROTLI_WINDOW)

    def chunk(self, data: bytes) -> bytes:
        compressor = self._compressor
        return cast("bytes", compressor.process(data) + compressor.flush())

    def finish(self, data: bytes) -> bytes:
        compressor = self._compressor
        return cast("bytes", compressor.process(data) + compressor.finish())


class _Brotli:
    __slots__ = ("_brotli", "level")
    name = "br"

    def __init__(self, brotli: Any, level: int) -> None:
        self._brotli = brotli
        self.level = level

    def compress(self, body: bytes) -> bytes:
        return cast("bytes", self._brotli.compress(body, quality=self.level, lgwin=_BROTLI_WINDOW))

    def stream(self) -> StreamCompressor:
        return _BrotliStream(self._brotli, self.level)


class _ZstdStream:
    __slots__ = ("_compressor", "_flush_block")

    def __init__(self, zstandard: Any, level: int) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level).compressobj()
        self._flush_block = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    def chunk(self, data: bytes) -> bytes:
        compressor = self._compressor
        return cast("bytes", compressor.compress(data) + compressor.flush(self._flush_block))

    def finish(self, data: bytes) -> bytes:
        compressor = self._compressor
        return cast("bytes", compressor.compress(data) + compressor.flush())


class _Zstd:
    __slots__ = ("_local", "_zstandard", "level")
    name = "zstd"

    def __init__(self, zstandard: Any, level: int) -> None:
        self._zstandard = zstandard
        self.level = level
        # A ZstdCompressor is not thread-safe and costs ~10 µs to build: one per thread is
        # reused (bodies above the thread threshold are compressed in worker threads).
        self._local = threading.local()

    def compress(self, body: bytes) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = self._zstandard.ZstdCompressor(level=self.level)
        return cast("bytes", compressor.compress(body))  # the frame header carries the content size

    def stream(self) -> StreamCompressor:
        return _ZstdStream(self._zstandard, self.level)


def _library(encoding: str) -> Any:
    """The module behind ``encoding``, or ``None`` when gzip (stdlib) needs none.

    Raises:
        MissingDependencyError: the library is not installed.
    """
    name = _LIBRARIES.get(encoding)
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(name, "compression") from exc


def load_codec(encoding: str, level: int | None = None) -> Codec:
    """Build the codec for ``encoding`` at ``level`` (its default level when ``None``).

    Raises:
        ConfigurationError: the encoding is unknown or the level is out of range.
        MissingDependencyError: the encoding's library (extra ``compression``) is missing.
    """
    if encoding not in DEFAULT_LEVELS:
        raise ConfigurationError(
            f"unknown content coding {encoding!r}; bastion produces {', '.join(ENCODINGS)}"
        )
    if level is None:
        level = DEFAULT_LEVELS[encoding]
    low, high = LEVEL_RANGES[encoding]
    if not low <= level <= high:
        raise ConfigurationError(f"{encoding} level must be from {low} to {high}, not {level!r}")
    library = _library(encoding)
    if encoding == "gzip":
        return _Gzip(level)
    if encoding == "br":
        return _Brotli(library, level)
    return _Zstd(library, level)


def available_encodings() -> tuple[str, ...]:
    """The codings whose library is installed, in bastion's default order of preference."""
    found = []
    for encoding in ENCODINGS:
        try:
            _library(encoding)
        except MissingDependencyError:
            continue
        found.append(encoding)
    return tuple(found)


@lru_cache(maxsize=64)
def _cached_codec(encoding: str, level: int | None) -> Codec:
    return load_codec(encoding, level)


def compress(body: bytes, encoding: str, level: int | None = None) -> bytes:
    """Compress a whole body with one content coding, e.g. to store a compressed variant.

    The output is exactly what ``CompressionMiddleware`` sends for a body that arrives in one
    message: a complete gzip member, brotli stream or zstd frame (with the content size).

    Args:
        body: the bytes to compress.
        encoding: ``"br"``, ``"zstd"`` or ``"gzip"``.
        level: the coding's level; ``DEFAULT_LEVELS[encoding]`` when omitted.

    Raises:
        ConfigurationError: the encoding is unknown or the level is out of range.
        MissingDependencyError: the encoding's library (extra ``compression``) is missing.
    """
    return _cached_codec(encoding, level).compress(body)
