"""Request paths that no application should ever be handed: NUL bytes, traversal, bad UTF-8.

Checked on the raw path the client sent (``raw_path``), decoded up to three times, so that
``%2e%2e``, ``%252e%252e`` and ``..%5c`` are caught as well as a plain ``..``. A path made only of
the characters ordinary URLs use (no ``%``, ``.``, ``\\``, NUL or non-ASCII byte) needs no
decoding at all; that is the cost of almost every request.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote_to_bytes

from bastion.types import Scope

__all__ = ["PathProblem", "path_problem"]

PathProblem = Literal["nul", "traversal", "invalid_utf8"]
"""Why a path was refused."""

_DECODE_ROUNDS = 3
# Bytes whose absence proves a path clean: no escape, no dot, no backslash, no NUL.
_SUSPECT = re.compile(rb"[%.\\\x00\x80-\xff]").search
_SEGMENTS = re.compile(rb"[/\\]")


def _problem_in(raw: bytes) -> PathProblem | None:
    for round_ in range(_DECODE_ROUNDS + 1):
        if b"\x00" in raw:
            return "nul"
        if b".." in raw and b".." in _SEGMENTS.split(raw):
            return "traversal"
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return "invalid_utf8"
        if b"%" not in raw or round_ == _DECODE_ROUNDS:
            return None
        raw = unquote_to_bytes(raw)
    return None  # pragma: no cover - the loop always returns


def path_problem(scope: Scope) -> PathProblem | None:
    """What is wrong with the request's path, or ``None`` when nothing is.

    Uses ``raw_path`` (the bytes on the wire, still %-encoded) when the server provides it, else
    ``path`` (already decoded once by the server).
    """
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        path: str = scope["path"]
        raw = path.encode("utf-8", "surrogatepass")
    else:
        raw = raw.partition(b"?")[0]  # some servers leave the query string on raw_path
    if _SUSPECT(raw) is None:
        return None
    return _problem_in(raw)
