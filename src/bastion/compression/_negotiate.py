"""Choosing a content coding from ``Accept-Encoding`` (RFC 9110 §12.5.3).

The rules, for a list of available codings in the server's order of preference:

- Each coding the client lists gets its ``q`` (1 when absent); ``*`` gives its ``q`` to every
  coding not listed by name; a coding neither listed nor covered by ``*`` is not acceptable.
  ``q=0`` means "not acceptable". ``x-gzip`` is read as ``gzip`` (RFC 9110 §8.4.1.3).
- The acceptable coding with the highest ``q`` wins; equal ``q`` values are broken by the
  server's preference (the order of ``available``).
- ``identity`` listed with a higher ``q`` than the winner means the client would rather have the
  body uncompressed, and it gets it.
- No header, an empty header, or one that does not parse mean no compression. A malformed header
  is never an error: the response is sent uncompressed, which every client accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["negotiate", "negotiate_cached", "parse_accept_encoding"]

_CODING = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # an RFC 9110 token, lower-cased
_QVALUE = re.compile(rb"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_OWS = b" \t"


def parse_accept_encoding(value: bytes) -> dict[str, float] | None:
    """The ``q`` of each coding listed in an ``Accept-Encoding`` value; ``None`` if malformed.

    Codings are lower-cased; when one is listed twice, the first entry counts.
    """
    weights: dict[str, float] = {}
    for element in value.split(b","):
        coding, semicolon, weight = element.partition(b";")
        coding = coding.strip(_OWS).lower()
        if not coding:
            if semicolon or weight:
                return None
            continue  # empty list elements are allowed (RFC 9110 §5.6.1)
        if _CODING.fullmatch(coding) is None:
            return None
        q = 1.0
        if semicolon:
            weight = weight.strip(_OWS)
            if weight[:2] not in (b"q=", b"Q=") or _QVALUE.fullmatch(weight, 2) is None:
                return None
            q = float(weight[2:])
        name = "gzip" if coding == b"x-gzip" else coding.decode("ascii")
        weights.setdefault(name, q)
    return weights


def _negotiate(accept_encoding: bytes, available: tuple[str, ...]) -> str | None:
    weights = parse_accept_encoding(accept_encoding)
    if not weights:
        return None
    star = weights.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in available:
        q = weights.get(coding, star)
        if q > best_q:  # strictly: on a tie, the earlier (preferred) coding stays
            best, best_q = coding, q
    if best is not None and weights.get("identity", 0.0) > best_q:
        return None
    return best


negotiate_cached = lru_cache(maxsize=1024)(_negotiate)
"""``negotiate`` for a raw header value and a tuple of codings, memoized: a server sees a
handful of distinct ``Accept-Encoding`` values, so parsing each once saves the work per
request (and an attacker cycling values only costs evictions)."""


def negotiate(accept_encoding: bytes | str | None, available: Iterable[str]) -> str | None:
    """The content coding to send, or ``None`` for the uncompressed (identity) body.

    Args:
        accept_encoding: the request's ``Accept-Encoding`` value (several header lines joined
            with ``,``), or ``None`` when the request has none.
        available: the codings the server can produce, most preferred first, e.g.
            ``("br", "zstd", "gzip")``.

    Without the header, this returns ``None``: RFC 9110 allows any coding then, but clients that
    omit it (scripts, health checkers, old proxies) often cannot decode one, so bastion follows
    nginx, Apache and Starlette in not compressing.

    >>> negotiate(b"gzip, br;q=0.9", ("br", "gzip"))
    'gzip'
    >>> negotiate(b"gzip, br", ("br", "gzip"))
    'br'
    """
    if accept_encoding is None:
        return None
    if isinstance(accept_encoding, str):
        try:
            accept_encoding = accept_encoding.encode("ascii")
        except UnicodeEncodeError:
            return None
    return negotiate_cached(accept_encoding, tuple(available))
