"""ASGI type aliases and the public protocols user code implements.

bastion speaks raw ASGI, so these are the only types a middleware needs; they match Starlette's
aliases, so a bastion middleware type-checks in ``app.add_middleware``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = ["ASGIApp", "AnyASGIApp", "Message", "Receive", "Scope", "Send"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
AnyASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI application, however precisely its framework types the scope (Litestar uses
TypedDicts that ``ASGIApp``'s mappings do not accept): what ``Bastion(app)`` takes."""
