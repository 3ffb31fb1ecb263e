"""HTTP answers to authentication failures: challenges and problem responses (RFC 6750, 9457)."""

from __future__ import annotations

from typing import Any

from bastion.exceptions import AuthError, InsufficientScope
from bastion.problem import send_problem
from bastion.types import Scope, Send

__all__ = ["challenge", "failure_headers", "failure_members", "send_failure"]

_TITLES = {
    401: "Unauthorized",
    403: "Forbidden",
    503: "Service Unavailable",
}


def _quoted(value: str) -> str:
    # A quoted-string may hold neither '"' nor '\'; the values come from settings and our own
    # fixed sentences, but a challenge must never be malformed.
    return '"' + value.replace("\\", "").replace('"', "'") + '"'


def challenge(realm: str, error: AuthError | None = None) -> bytes:
    """The ``WWW-Authenticate`` value for a failure (RFC 6750 §3).

    No ``error`` at all when no credentials were sent (§3.1), ``invalid_token`` for refused
    credentials, ``insufficient_scope`` with the needed ``scope`` for a 403.
    """
    parts = [f"Bearer realm={_quoted(realm)}"]
    if error is not None and error.error is not None:
        parts.append(f"error={_quoted(error.error)}")
        parts.append(f"error_description={_quoted(error.detail)}")
        if isinstance(error, InsufficientScope) and error.required:
            parts.append(f"scope={_quoted(' '.join(error.required))}")
    return ", ".join(parts).encode("latin-1", "replace")


def failure_headers(error: AuthError, realm: str) -> list[tuple[bytes, bytes]]:
    """``WWW-Authenticate`` for 401 and 403, ``Retry-After`` for 503."""
    if error.status == 503:
        return [(b"retry-after", b"1")]
    return [(b"www-authenticate", challenge(realm, error))]


def failure_members(error: AuthError) -> dict[str, Any]:
    """Extension members of the problem body: the scopes a 403 lacked."""
    if isinstance(error, InsufficientScope) and error.required:
        return {"required_scopes": list(error.required)}
    return {}


async def send_failure(scope: Scope, send: Send, error: AuthError, realm: str) -> None:
    """Answer with a problem+json 401, 403 or 503 carrying its challenge."""
    await send_problem(
        scope,
        send,
        error.status,
        title=_TITLES.get(error.status),
        detail=error.detail,
        headers=failure_headers(error, realm),
        extensions=failure_members(error),
    )
