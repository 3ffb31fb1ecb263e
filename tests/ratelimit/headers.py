"""A strict parser for the RateLimit header fields, to check what the server sends.

It implements the part of RFC 9651 the fields use: a List of Items whose bare items are Strings
and whose parameters are Integers. Anything else raises ``ValueError``, so a malformed field
fails the test that reads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER = re.compile(r"-?[0-9]{1,15}")


def parse_list(value: str) -> list[tuple[str, dict[str, int]]]:
    """Parse ``"name";q=1;w=2, "other";r=3`` into ``[(name, {q: 1, w: 2}), ...]``."""
    items: list[tuple[str, dict[str, int]]] = []
    position = 0
    while True:
        name, position = _string(value, position)
        parameters: dict[str, int] = {}
        while position < len(value) and value[position] == ";":
            position += 1
            found = _KEY.match(value, position)
            if found is None:
                raise ValueError(f"bad parameter key at {position} in {value!r}")
            position = found.end()
            if position >= len(value) or value[position] != "=":
                raise ValueError(f"parameter without an integer value in {value!r}")
            number = _INTEGER.match(value, position + 1)
            if number is None:
                raise ValueError(f"parameter value is not an integer in {value!r}")
            parameters[found.group()] = int(number.group())
            position = number.end()
        items.append((name, parameters))
        while position < len(value) and value[position] in " \t":
            position += 1
        if position == len(value):
            return items
        if value[position] != ",":
            raise ValueError(f"expected ',' at {position} in {value!r}")
        position += 1
        while position < len(value) and value[position] in " \t":
            position += 1
        if position == len(value):
            raise ValueError(f"trailing comma in {value!r}")


def _string(value: str, position: int) -> tuple[str, int]:
    if position >= len(value) or value[position] != '"':
        raise ValueError(f"expected a string at {position} in {value!r}")
    position += 1
    chars = []
    while position < len(value):
        char = value[position]
        if char == "\\":
            if position + 1 >= len(value) or value[position + 1] not in '"\\':
                raise ValueError(f"bad escape in {value!r}")
            chars.append(value[position + 1])
            position += 2
        elif char == '"':
            return "".join(chars), position + 1
        elif not " " <= char <= "~":
            raise ValueError(f"non-printable character in {value!r}")
        else:
            chars.append(char)
            position += 1
    raise ValueError(f"unterminated string in {value!r}")


def remaining(headers: Mapping[str, str], policy: str) -> int:
    """The ``r`` of ``policy`` in a response's ``RateLimit`` field."""
    return dict(parse_list(headers["ratelimit"]))[policy]["r"]
