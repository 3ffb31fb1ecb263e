"""Strong ETags from content, and the headers of a ``304 Not Modified``.

The tag is a BLAKE2b digest of the body bytes sent (after any content coding), so two workers,
or the same worker after a restart, give the same representation the same tag without sharing
anything. It is hex, so it never contains the ``-coding`` suffix that ``bastion.compression``
appends to, and strips from, the tags of the variants it makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["NOT_MODIFIED_HEADERS", "content_etag", "not_modified_headers"]

NOT_MODIFIED_HEADERS = frozenset(
    {
        b"age",
        b"cache-control",
        b"cache-status",
        b"content-location",
        b"date",
        b"etag",
        b"expires",
        b"last-modified",
        b"vary",
    }
)
"""What a 304 repeats of the 200 it stands for (RFC 9110 §15.4.5): the validators and the fields
that tell caches how to update the response they hold; never the body's own metadata."""


def content_etag(body: bytes) -> bytes:
    """A strong entity tag for ``body``: ``"`` + 32 hex digits of BLAKE2b-128 + ``"``."""
    return b'"' + blake2b(body, digest_size=16).hexdigest().encode("ascii") + b'"'


def not_modified_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers of a 304 that replaces a response with ``headers`` (names lower-case)."""
    return [(key, value) for key, value in headers if key in NOT_MODIFIED_HEADERS]
