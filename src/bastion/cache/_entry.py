"""The stored form of a cached response, and the header blocks a hit sends.

An entry is one ``bytes`` value, so any ``CacheBackend`` can hold it and every worker reads what
another wrote::

    b"BC1" | status u16 | stored_at f64 | fresh_s f64 | stale_while_revalidate_s f64
           | stale_if_error_s f64 | header block length u32 | header block | body

The header block is the response's headers as ``name NUL value NUL ...`` (HTTP field values
cannot contain NUL, RFC 9110 §5.5), which ``bytes.split`` turns back into pairs in one C call.
``stored_at`` is wall-clock time, so ``Age`` means the same in every worker.

A decoded entry keeps the header list a hit sends (ready-made, minus ``Age``, which changes
every second), so serving it allocates one list and two messages.
"""

from __future__ import annotations

import struct

from bastion.exceptions import StoreDataError

__all__ = ["Entry", "MARKER_MAGIC", "decode_entry", "encode_entry"]

_MAGIC = b"BC1"
MARKER_MAGIC = b"BV1"
"""First bytes of a Vary marker: the request headers a route's responses vary on."""
_HEAD = struct.Struct("!3sHddddI")


class Entry:
    """A cached response.

    Attributes:
        status: the status code.
        headers: the response headers, lower-case names, without ``Age``/``Cache-Status``.
        body: the body as it was sent (content coding applied, if any).
        stored_at: wall-clock seconds when the response was produced.
        fresh_s: its freshness lifetime.
        stale_while_revalidate_s: how long after expiry it may be served while refreshing.
        stale_if_error_s: how long after expiry it may stand in for a failed response.
        etag: its ``ETag`` value, or ``None``.
        hit_headers: ``headers`` plus ``Cache-Status: bastion; hit`` (a hit adds ``Age``).
    """

    __slots__ = (
        "body",
        "etag",
        "fresh_s",
        "headers",
        "hit_headers",
        "stale_if_error_s",
        "stale_while_revalidate_s",
        "status",
        "stored_at",
    )

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        stored_at: float,
        fresh_s: float,
        stale_while_revalidate_s: float = 0.0,
        stale_if_error_s: float = 0.0,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stored_at = stored_at
        self.fresh_s = fresh_s
        self.stale_while_revalidate_s = stale_while_revalidate_s
        self.stale_if_error_s = stale_if_error_s
        etag = None
        for key, value in headers:
            if key == b"etag":
                etag = value
        self.etag = etag
        self.hit_headers = [*headers, (b"cache-status", b"bastion; hit")]

    @property
    def keep_s(self) -> float:
        """How long a store must keep the entry: fresh, then stale for as long as it may serve."""
        return self.fresh_s + max(self.stale_while_revalidate_s, self.stale_if_error_s)

    def __repr__(self) -> str:
        return (
            f"Entry(status={self.status}, bytes={len(self.body)}, etag={self.etag!r}, "
            f"fresh_s={self.fresh_s})"
        )


def encode_entry(entry: Entry) -> bytes:
    """The stored form of ``entry``."""
    block = b"\0".join(part for pair in entry.headers for part in pair)
    return b"".join(
        (
            _HEAD.pack(
                _MAGIC,
                entry.status,
                entry.stored_at,
                entry.fresh_s,
                entry.stale_while_revalidate_s,
                entry.stale_if_error_s,
                len(block),
            ),
            block,
            entry.body,
        )
    )


def decode_entry(data: bytes) -> Entry:
    """The entry stored as ``data``.

    Raises:
        StoreDataError: ``data`` is not an entry (another writer, or a corrupted value).
    """
    try:
        magic, status, stored_at, fresh_s, swr_s, sie_s, length = _HEAD.unpack_from(data)
    except struct.error as exc:
        raise StoreDataError("cache entry is truncated") from exc
    if magic != _MAGIC:
        raise StoreDataError("cache value is not a response entry")
    start = _HEAD.size
    end = start + length
    if end > len(data):
        raise StoreDataError("cache entry is truncated")
    headers: list[tuple[bytes, bytes]] = []
    if length:
        parts = data[start:end].split(b"\0")
        if len(parts) % 2:
            raise StoreDataError("cache entry has a malformed header block")
        pairs = iter(parts)
        headers = list(zip(pairs, pairs, strict=True))
    return Entry(status, headers, data[end:], stored_at, fresh_s, swr_s, sie_s)


def encode_marker(names: tuple[bytes, ...]) -> bytes:
    """A Vary marker: ``names`` are the request headers the route's responses vary on."""
    return MARKER_MAGIC + b"\0".join(names)


def decode_marker(data: bytes) -> tuple[bytes, ...] | None:
    """The header names of a Vary marker, or ``None`` when ``data`` is not one."""
    if not data.startswith(MARKER_MAGIC):
        return None
    rest = data[len(MARKER_MAGIC) :]
    return tuple(name for name in rest.split(b"\0") if name)
