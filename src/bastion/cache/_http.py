"""HTTP caching semantics: ``Cache-Control`` (RFC 9111 §5.2), ``Vary``, validators, queries.

Everything here works on raw header bytes, as they arrive in ASGI messages, and is memoized where
a server sees few distinct values (``Cache-Control`` of responses and requests, ``Vary``): parsing
once per distinct value keeps the per-request cost to a dict lookup. Memo tables are bounded, so
a client cycling values costs evictions, never memory.
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import parse_qsl, quote

__all__ = [
    "CACHEABLE_STATUSES",
    "CacheControl",
    "cache_status",
    "etag_matches",
    "http_date_seconds",
    "normalize_query",
    "parse_cache_control",
    "parse_vary",
]

CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses stored by default: RFC 9110 §15.1's "heuristically cacheable" list, without 206
(partial content: bastion neither stores nor assembles byte ranges). Anything else, 302 or a 5xx
included, always goes to the app."""

_DIRECTIVE = re.compile(
    rb'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*)))?\s*(?:,|$)'
)
_MEMO_LIMIT = 512


class CacheControl:
    """The directives of a ``Cache-Control`` value that a shared cache acts on.

    Durations are seconds, ``None`` when absent. A directive with an invalid value is treated as
    RFC 9111 §4.2.1 says for ``max-age``: as if it were stale (0), so a malformed header never
    makes something cacheable for longer.

    Attributes:
        max_age: ``max-age``.
        s_maxage: ``s-maxage`` (responses; shared caches prefer it to ``max-age``).
        no_store: ``no-store``.
        no_cache: ``no-cache`` (with or without a field list).
        private: ``private`` (with or without a field list).
        public: ``public``.
        must_revalidate: ``must-revalidate`` or ``proxy-revalidate``: never served stale.
        stale_while_revalidate: ``stale-while-revalidate`` (RFC 5861).
        stale_if_error: ``stale-if-error`` (RFC 5861).
        min_fresh: ``min-fresh`` (requests).
        only_if_cached: ``only-if-cached`` (requests).
    """

    __slots__ = (
        "max_age",
        "min_fresh",
        "must_revalidate",
        "no_cache",
        "no_store",
        "only_if_cached",
        "private",
        "public",
        "s_maxage",
        "stale_if_error",
        "stale_while_revalidate",
    )

    def __init__(self) -> None:
        self.max_age: int | None = None
        self.s_maxage: int | None = None
        self.no_store = False
        self.no_cache = False
        self.private = False
        self.public = False
        self.must_revalidate = False
        self.stale_while_revalidate: int | None = None
        self.stale_if_error: int | None = None
        self.min_fresh: int | None = None
        self.only_if_cached = False

    def __repr__(self) -> str:
        fields = (f"{name}={getattr(self, name)!r}" for name in sorted(self.__slots__))
        return f"CacheControl({', '.join(fields)})"


_DURATIONS = {
    b"max-age": "max_age",
    b"s-maxage": "s_maxage",
    b"stale-while-revalidate": "stale_while_revalidate",
    b"stale-if-error": "stale_if_error",
    b"min-fresh": "min_fresh",
}
_FLAGS = {
    b"no-store": "no_store",
    b"no-cache": "no_cache",
    b"private": "private",
    b"public": "public",
    b"must-revalidate": "must_revalidate",
    b"proxy-revalidate": "must_revalidate",
    b"only-if-cached": "only_if_cached",
}


def _seconds(value: bytes | None) -> int:
    if value is None or not value.isdigit():
        return 0  # invalid: treated as stale (RFC 9111 §4.2.1, §5.2.1.1)
    return min(int(value), 2**31)  # RFC 9111 §1.2.2: delta-seconds saturate at 2**31


@lru_cache(maxsize=_MEMO_LIMIT)
def parse_cache_control(value: bytes) -> CacheControl:
    """Parse a ``Cache-Control`` value (several field lines joined with ``,``).

    Directive names are case-insensitive; unknown directives are ignored; when a duration
    appears twice, the smaller wins (the safer reading of a conflict, RFC 9111 §4.2.1). The
    result is shared between callers: never modify it.
    """
    control = CacheControl()
    position, end = 0, len(value)
    while position < end:
        found = _DIRECTIVE.match(value, position)
        if found is None or found.end() == position:
            # Malformed: skip to the next comma, keep what parsed so far.
            comma = value.find(b",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        position = found.end()
        name = found[1].lower()
        argument = found[2] if found[2] is not None else found[3]
        duration = _DURATIONS.get(name)
        if duration is not None:
            seconds = _seconds(argument)
            previous = getattr(control, duration)
            setattr(control, duration, seconds if previous is None else min(previous, seconds))
            continue
        flag = _FLAGS.get(name)
        if flag is not None:
            setattr(control, flag, True)
    return control


@lru_cache(maxsize=_MEMO_LIMIT)
def parse_vary(value: bytes) -> tuple[bytes, ...] | None:
    """The request header names (lower-case, sorted, unique) a ``Vary`` value lists.

    Returns ``None`` for ``*``: the response varies on something outside the request, so it
    can never be served from a cache.
    """
    names: set[bytes] = set()
    for part in value.split(b","):
        name = part.strip().lower()
        if name == b"*":
            return None
        if name:
            names.add(name)
    return tuple(sorted(names))


def _tags(value: bytes) -> list[bytes] | None:
    """The entity tags of an ``If-None-Match`` value, ``W/`` removed; ``None`` for ``*``."""
    if value.strip() == b"*":
        return None
    tags = []
    for raw in value.split(b","):
        tag = raw.strip()
        if tag.startswith((b"W/", b"w/")):
            tag = tag[2:]
        if len(tag) >= 2 and tag[:1] == b'"' and tag[-1:] == b'"':
            tags.append(tag)
    return tags


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """Whether ``If-None-Match`` matches ``etag``, by weak comparison (RFC 9110 §13.1.2).

    Weak comparison ignores the ``W/`` prefix on either side. ``*`` matches any current
    representation.
    """
    tags = _tags(if_none_match)
    if tags is None:
        return True
    own = etag[2:] if etag.startswith(b"W/") else etag
    return own in tags


def http_date_seconds(value: bytes) -> float | None:
    """An HTTP-date (``Expires``, ``Date``) as epoch seconds, or ``None`` if it is invalid."""
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_query_memo: dict[bytes, bytes] = {}


def normalize_query(query_string: bytes) -> bytes:
    """The query string in one canonical form: decoded, sorted by name then value, re-encoded.

    ``b=2&a=1``, ``a=1&b=2`` and ``a=%31&b=2`` give the same result, so they share a cache
    entry; ``+`` and ``%20`` both mean a space, as HTML forms encode them. Parameter order is
    not significant for any framework bastion serves (each reads parameters by name), but the
    order of repeated values of one name is: ``a=2&a=1`` and ``a=1&a=2`` stay apart. Memoized
    (bounded).
    """
    if not query_string:
        return b""
    try:
        return _query_memo[query_string]
    except KeyError:
        pass
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8")
    names = sorted({name for name, _ in pairs})
    by_name: dict[str, list[str]] = {name: [] for name in names}
    for name, value in pairs:
        by_name[name].append(value)
    normalized = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}"
        for name in names
        for value in by_name[name]
    ).encode("ascii")
    if len(_query_memo) >= 4096:
        _query_memo.clear()  # query strings are unbounded (ids, search terms): forget at once
    _query_memo[query_string] = normalized
    return normalized


def cache_status(*parameters: str | None, cache_name: str = "bastion") -> bytes:
    """A ``Cache-Status`` value (RFC 9211): ``bastion; hit`` or ``bastion; fwd=miss; stored``.

    ``None`` parameters are left out.
    """
    return "; ".join([cache_name, *(p for p in parameters if p)]).encode("ascii")
