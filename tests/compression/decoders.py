"""Decoders built on the real libraries, so tests check what a client would actually decode."""

from __future__ import annotations

import zlib
from typing import Any

import brotli  # type: ignore[import-untyped]
import zstandard


def decompress(body: bytes, encoding: str) -> bytes:
    """Decode a whole body in one of bastion's codings (``identity`` returns it as it is)."""
    if encoding == "gzip":
        return zlib.decompress(body, wbits=16 + zlib.MAX_WBITS)
    if encoding == "br":
        return bytes(brotli.decompress(body))
    if encoding == "zstd":
        # A streamed frame has no content size in its header: decode it as a stream.
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert "identity" == encoding
    return body


class IncrementalDecoder:
    """Decodes a body chunk by chunk, as a browser does while a response streams in."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoder: Any
        if encoding == "gzip":
            self._decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif encoding == "br":
            self._decoder = brotli.Decompressor()
        else:
            assert "zstd" == encoding
            self._decoder = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, chunk: bytes) -> bytes:
        """Everything ``chunk`` lets the decoder produce right now."""
        if self.encoding == "br":
            return bytes(self._decoder.process(chunk))
        return bytes(self._decoder.decompress(chunk))
