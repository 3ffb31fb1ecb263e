"""Raw ASGI helpers shared by every middleware: headers, paths, JSON responses.

These work on the ASGI messages directly (lists of ``(bytes, bytes)`` header pairs) because
building framework objects (``Request``, ``Headers``) per request is the cost bastion avoids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

from bastion.types import Scope, Send

__all__ = ["get_header", "retry_after", "scope_path", "send_body", "send_json"]


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Return the first value of header ``name`` (lower-case bytes), or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


def retry_after(seconds: float) -> int:
    """``Retry-After`` in whole seconds: rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def scope_path(scope: Scope) -> str:
    """The path the application routes on: ``scope["path"]`` without ``root_path``."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


async def send_body(
    send: Send,
    body: bytes,
    *,
    status: int = 200,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    """Send a complete response in two messages; ``head`` sends the headers without the body."""
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
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(
    send: Send,
    data: Any,
    *,
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = (),
    content_type: bytes = b"application/json",
) -> None:
    """Send a complete JSON response (orjson-encoded) in two messages."""
    await send_body(
        send, orjson.dumps(data), status=status, content_type=content_type, headers=headers
    )
