"""Raw ASGI helpers shared by every middleware: headers, response starts, exclusions.

These work on the ASGI messages directly (lists of ``(bytes, bytes)`` header pairs) because
building framework objects (``Request``, ``Headers``) per request is the cost bastion avoids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from bastion.exceptions import ConfigurationError
from bastion.types import Message, Scope, Send

__all__ = [
    "Exclude",
    "send_json",
    "compile_exclude",
    "get_header",
    "has_header",
    "scope_path",
]

Exclude = str | Sequence[str] | Callable[[Scope], bool] | None
"""What a middleware's ``exclude=`` accepts: regex(es) matched at the start of the path, or a
predicate over the scope."""


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Return the first value of header ``name`` (lower-case bytes), or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


def has_header(message: Message, name: bytes) -> bool:
    """Whether a ``http.response.start`` message already carries header ``name``."""
    return any(key.lower() == name for key, _ in message.get("headers", ()))


def scope_path(scope: Scope) -> str:
    """The path the application routes on: ``scope["path"]`` without ``root_path``."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def compile_exclude(exclude: Exclude) -> Callable[[Scope], bool] | None:
    """Compile an ``exclude=`` option once into a predicate (``None`` when nothing is excluded).

    Strings are regular expressions matched at the start of the routed path (``"/_bastion"``
    excludes everything under it; ``"/health$"`` only that path).

    Raises:
        ConfigurationError: a pattern does not compile.
    """
    if exclude is None:
        return None
    if callable(exclude):
        return exclude
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    if not patterns:
        return None
    try:
        combined = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
    except re.error as exc:
        raise ConfigurationError(
            f"exclude pattern {patterns!r} is not a valid regex: {exc}"
        ) from exc
    match = combined.match

    def is_excluded(scope: Scope) -> bool:
        return match(scope_path(scope)) is not None

    return is_excluded


async def send_json(
    send: Send,
    data: Any,
    *,
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = (),
    content_type: bytes = b"application/json",
) -> None:
    """Send a complete JSON response (orjson-encoded) in two messages."""
    body = orjson.dumps(data)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
