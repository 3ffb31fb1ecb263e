"""Response compression: br, zstd and gzip negotiated by ``Accept-Encoding``, streaming-safe.

::

    from fastapi import FastAPI
    from bastion.compression import CompressionMiddleware

    app = FastAPI()
    app.add_middleware(CompressionMiddleware, exclude=["/account"])

``compress`` and ``negotiate`` are the same building blocks for code that stores compressed
variants itself (a response cache). See ``docs/compression.md``, including the BREACH stance.
"""

from __future__ import annotations

from bastion.compression._codecs import (
    DEFAULT_LEVELS,
    ENCODINGS,
    LEVEL_RANGES,
    Codec,
    StreamCompressor,
    available_encodings,
    compress,
    load_codec,
)
from bastion.compression._exclude import Exclude
from bastion.compression._middleware import (
    DEFAULT_EXCLUDED_CONTENT_TYPES,
    CompressionMiddleware,
    compression_options,
)
from bastion.compression._negotiate import negotiate, parse_accept_encoding

__all__ = [
    "Codec",
    "CompressionMiddleware",
    "DEFAULT_EXCLUDED_CONTENT_TYPES",
    "DEFAULT_LEVELS",
    "ENCODINGS",
    "Exclude",
    "LEVEL_RANGES",
    "StreamCompressor",
    "available_encodings",
    "compress",
    "compression_options",
    "load_codec",
    "negotiate",
    "parse_accept_encoding",
]
